"""Seed 000's "Monitoring" snippet, as written, with only the import changed.

The seed leaves `model` and `config` to the reader: here `config` is the seed's YAML
(./config/deployment_config.yaml) and `model` the server of seed 000's deployment snippet,
started and kept busy by a few client threads so the figures are live. Run from this folder:

    cd examples && python seed_000_monitoring.py
"""

import json
import threading

import httpx

from cvdeploy import Config, ModelMonitor, ModelServer
from cvdeploy.demo import sample_images

# -- set-up (not in the seed): the server of seed 000's deployment snippet, under load ----------
config = Config()
model = ModelServer(
    model_type="yolo",
    model_path=config.get_model_config()["weights_path"],
    **config.get_deployment_config(),
)
model.start()
image = sample_images("shapes_*")[0].read_bytes()
busy = threading.Event()


def load() -> None:
    with httpx.Client(base_url=model.url, timeout=60) as client:
        while not busy.is_set():
            client.post(f"/v1/models/{model.name}/predict", content=image,
                        headers={"content-type": "image/jpeg"})  # fmt: skip


clients = [threading.Thread(target=load) for _ in range(4)]
for client in clients:
    client.start()
busy.wait(3.0)  # let some requests through

# -- the seed's snippet --------------------------------------------------------------------------
# fmt: off
# Initialize monitor
monitor = ModelMonitor(
    model=model,
    **config.get_monitoring_config()
)

# Start monitoring
monitor.start()

# Get metrics
metrics = monitor.get_metrics()
# fmt: on

# -- show and clean up ---------------------------------------------------------------------------
print(json.dumps(metrics, indent=2, default=str))
monitor.stop()
busy.set()
for client in clients:
    client.join()
model.stop()
