"""Payload logging: sampled request records from a real server, the bounded store, the CLI."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cvdeploy import ModelServer
from cvdeploy.cli.app import app
from cvdeploy.cli.logs import parse_since
from cvdeploy.config import PayloadLogConfig
from cvdeploy.demo import CLASSIFIER, demo_file, sample_images
from cvdeploy.errors import ConfigError, NotAvailableError
from cvdeploy.monitoring.payloads import PayloadLogger, PayloadStore
from cvdeploy.runtime import ImageLimits

DIGITS = [p.read_bytes() for p in sample_images("digit_*")]


class FakeResult:
    """What the logger needs of a result: its serving JSON."""

    def __init__(self, label: str = "3", score: float = 0.9) -> None:
        self.label = label
        self.score = score

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "classification",
            "classes": [{"class_id": int(self.label), "label": self.label, "score": self.score}],
        }


def serve_and_send(tmp_path: Path, images: list[bytes], **payload_log: Any) -> Path:
    """Serve the demo classifier with payload logging, post ``images``, stop; the log's path."""
    path = tmp_path / "p.db"
    section = {"enabled": True, "sample_rate": 1.0, "path": str(path), **payload_log}
    server = ModelServer("classification", demo_file(CLASSIFIER), port=0, access_log=False,
                         drift={"enabled": False}, payload_log=section)  # fmt: skip
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        for png in images:
            answer = http.post(f"/v1/models/{server.name}/predict", content=png,
                               headers={"content-type": "image/png"})  # fmt: skip
            assert answer.status_code == 200, answer.text
    return path  # stopping the server wrote what was pending


def logger_for(tmp_path: Path, **config: Any) -> PayloadLogger:
    section = PayloadLogConfig(enabled=True, sample_rate=1.0, path=str(tmp_path / "l.db"), **config)
    return PayloadLogger(section, "digits", "7", limits=ImageLimits(), flush_interval_s=0.05)


def test_every_request_of_a_real_server_gets_a_record(tmp_path: Path) -> None:
    path = serve_and_send(tmp_path, DIGITS, store_images=True)
    records = PayloadStore(path).query(include_images=True)
    assert len(records) == len(DIGITS) == 10
    for record, png in zip(records, DIGITS, strict=True):
        assert record["status"] == "ok", record
        assert record["model"] == "digits_classifier"
        assert record["version"] == "1"
        assert record["image_sha256"] == hashlib.sha256(png).hexdigest()
        assert record["image_bytes"] == len(png)
        assert record["width"] > 0
        assert record["height"] > 0
        assert record["latency_ms"] > 0
        assert {"brightness", "contrast", "top_class", "confidence"} <= set(record["features"])
        assert record["predictions"]["task"] == "classification"
        assert record["has_image"]
        assert record["image"] == png
        assert record["request_id"]  # the HTTP layer's id, for joining with the access log
    assert len({r["request_id"] for r in records}) == len(records)
    times = [r["time"] for r in records]
    assert times == sorted(times)
    assert time.time() - times[0] < 120


def test_half_the_images_are_sampled_at_rate_one_half(tmp_path: Path) -> None:
    path = serve_and_send(tmp_path, DIGITS, sample_rate=0.5)
    store = PayloadStore(path)
    assert store.count() == 5
    assert all(not r["has_image"] for r in store.query())  # store_images is off by default


def test_the_store_keeps_only_the_newest_max_rows(tmp_path: Path) -> None:
    logger = logger_for(tmp_path, max_rows=4)
    for i in range(10):
        logger.offer([DIGITS[i]], [FakeResult(str(i))], 0.002, request_id=f"r{i}")
    logger.close()
    records = logger.store.query()
    assert logger.written == 10
    assert [r["request_id"] for r in records] == ["r6", "r7", "r8", "r9"]


def test_images_over_max_image_bytes_are_recorded_without_bytes(tmp_path: Path) -> None:
    small, large = sorted(DIGITS, key=len)[0], sorted(DIGITS, key=len)[-1]
    logger = logger_for(tmp_path, store_images=True, max_image_bytes=len(small))
    logger.offer([small, large], [FakeResult(), FakeResult()], 0.01)
    logger.close()
    first, second = logger.store.query(include_images=True)
    assert first["image"] == small
    assert second["image"] is None
    assert second["image_bytes"] == len(large)


def test_undecodable_image_is_a_feature_error_record_and_the_worker_lives(tmp_path: Path) -> None:
    logger = logger_for(tmp_path)
    logger.offer([b"not an image", DIGITS[0]], [FakeResult(), FakeResult()], 0.01)
    logger.close()
    bad, good = logger.store.query()
    assert bad["status"] == "feature_error"
    assert "InvalidImageError" in bad["error"]
    assert bad["image_sha256"] == hashlib.sha256(b"not an image").hexdigest()
    assert bad["predictions"]["classes"][0]["label"] == "3"
    assert bad["features"] is None
    assert good["status"] == "ok"
    assert logger.feature_errors == 1
    assert logger.store.query(status="feature_error") == [bad]


def test_numpy_images_are_hashed_over_their_pixels(tmp_path: Path) -> None:
    import numpy as np

    image = np.full((12, 20, 3), 128, dtype=np.uint8)
    logger = logger_for(tmp_path, store_images=True)
    logger.offer([image], [FakeResult()], 0.01)
    logger.close()
    (record,) = logger.store.query(include_images=True)
    assert (record["width"], record["height"], record["image_bytes"]) == (20, 12, image.nbytes)
    assert record["image"] is None  # no encoded bytes to keep
    assert record["features"]["brightness"] == pytest.approx(128, abs=1)


class SlowResult(FakeResult):
    """Holds the worker inside a record until the test lets it go."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def to_dict(self) -> dict[str, Any]:
        self.gate.wait(5)
        return super().to_dict()


def test_a_full_queue_drops_records_and_counts_them(tmp_path: Path) -> None:
    section = PayloadLogConfig(enabled=True, sample_rate=1.0, path=str(tmp_path / "q.db"))
    logger = PayloadLogger(section, "m", "1", limits=ImageLimits(), max_pending=2)
    gate = threading.Event()
    logger.offer(DIGITS, [SlowResult(gate)] * len(DIGITS), 0.01)  # the worker holds one at most
    gate.set()
    logger.close()
    assert logger.sampled + logger.dropped == 10
    assert 2 <= logger.sampled <= 3
    assert logger.dropped >= 7
    assert logger.store.count() == logger.sampled == logger.written
    assert logger.stats()["dropped"] == logger.dropped


@pytest.fixture
def filled(tmp_path: Path) -> PayloadStore:
    logger = logger_for(tmp_path)
    logger.offer(DIGITS[:3], [FakeResult()] * 3, 0.004, request_id="req-1")
    logger.offer([b"broken"], [FakeResult()], 0.004, request_id="req-2")
    logger.close()
    return logger.store


def test_query_filters(filled: PayloadStore) -> None:
    assert filled.count() == 4
    assert filled.count(model="digits", version="7") == 4
    assert filled.count(model="other") == 0
    assert filled.count(status="feature_error") == 1
    assert filled.count(since=time.time() + 60) == 0
    assert filled.count(until=time.time() + 60) == 4
    assert [r["request_id"] for r in filled.query(limit=2)] == ["req-1", "req-2"]


def test_cli_logs_json_and_jsonl_export(filled: PayloadStore, tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["logs", "--path", str(filled.path), "--json", "--since", "10m"])
    assert shown.exit_code == 0, shown.output
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(lines) == 4
    assert lines[0]["request_id"] == "req-1"
    table = runner.invoke(app, ["logs", "--path", str(filled.path), "--status", "ok"])
    assert table.exit_code == 0, table.output
    assert "3 record(s)" in table.output
    assert "0.90" in table.output  # the top class and its score
    out = tmp_path / "x.jsonl"
    exported = runner.invoke(app, ["logs", "--path", str(filled.path), "--export", str(out)])
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "feature_error"]


def test_cli_logs_errors_say_what_to_do(filled: PayloadStore, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["logs", "--path", str(tmp_path / "none.db")])
    assert missing.exit_code == 2
    assert "payload_log" in missing.output
    bad_since = runner.invoke(app, ["logs", "--path", str(filled.path), "--since", "yesterday"])
    assert bad_since.exit_code == 2
    assert "10m" in bad_since.output
    bad_export = runner.invoke(app, ["logs", "--path", str(filled.path), "--export", "x.csv"])
    assert bad_export.exit_code == 2
    assert ".parquet" in bad_export.output


def test_parse_since_reads_ages_and_iso_times() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("1d", now=100_000.0) == 13_600.0
    assert parse_since("1970-01-01T00:01:00") == 60.0
    assert parse_since("1970-01-01T01:00:00+01:00") == 0.0


def test_parquet_export(filled: PayloadStore, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "x.parquet"
    assert filled.export_parquet(out, status="ok") == 3
    table = pq.read_table(out)
    assert table.num_rows == 3
    assert set(table.column("request_id").to_pylist()) == {"req-1"}
    features = json.loads(table.column("features")[0].as_py())
    assert "brightness" in features


def test_parquet_export_without_pyarrow_says_how_to_get_it(
    filled: PayloadStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(NotAvailableError, match=r"cvdeploy\[parquet\]"):
        filled.export_parquet(tmp_path / "x.parquet")


def test_cli_logs_finds_the_path_in_the_config(filled: PayloadStore, tmp_path: Path) -> None:
    config = tmp_path / "deploy.yaml"
    config.write_text(
        f"deployment:\n  monitoring:\n    payload_log:\n      path: {filled.path}\n",
        encoding="utf-8",
    )
    shown = CliRunner().invoke(app, ["logs", "--config", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    assert len(shown.stdout.splitlines()) == 4


def test_an_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    section = PayloadLogConfig(enabled=True, path=str(tmp_path))  # a folder, not a file
    with pytest.raises(ConfigError, match=r"payload_log\.enabled"):
        PayloadLogger(section, "m", "1", limits=ImageLimits())


def test_serve_settings_carry_the_section_from_the_config_to_workers(tmp_path: Path) -> None:
    from cvdeploy.cli.settings import settings_for_serve
    from cvdeploy.serving.settings import ServeSettings

    config = tmp_path / "deploy.yaml"
    config.write_text(
        "deployment:\n  monitoring:\n    payload_log:\n"
        "      enabled: true\n      sample_rate: 0.25\n",
        encoding="utf-8",
    )
    settings, _, _ = settings_for_serve(
        demo_file(CLASSIFIER), task=None, name=None, host=None, port=None, workers=None,
        config_path=config, max_batch_size=None, max_queue_delay_ms=None,
        batching_enabled=None, timeout=None, cache_size=None, token=None,
    )  # fmt: skip
    assert settings.payload_log.enabled
    assert settings.payload_log.sample_rate == 0.25
    assert ServeSettings.from_json(settings.to_json()).payload_log == settings.payload_log
