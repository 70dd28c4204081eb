"""docs/platform.md stays in step with the code it documents."""

from __future__ import annotations

import re
from pathlib import Path

from cvdeploy.cli.endpoints import endpoints_app
from cvdeploy.platforms.instance_types import as_markdown_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "platform.md"
START = "<!-- instance-types:start -->"
END = "<!-- instance-types:end -->"


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_instance_types_table_is_the_generated_one() -> None:
    text = _text()
    assert text.count(START) == 1, f"{DOC} needs exactly one {START}"
    assert text.count(END) == 1, f"{DOC} needs exactly one {END}"
    between = text.split(START, 1)[1].split(END, 1)[0]
    # Regenerate with: python -c "from cvdeploy.platforms.instance_types import *;
    # print(as_markdown_table(), end='')" and paste it between the markers.
    assert between.strip("\n") == as_markdown_table().strip("\n")


def _subcommands() -> list[str]:
    names = []
    for command in endpoints_app.registered_commands:
        name = command.name
        if name is None and command.callback is not None:
            name = command.callback.__name__.replace("_", "-")
        assert name, "every endpoints subcommand has a name"
        names.append(name)
    return names


def test_endpoints_app_has_the_expected_commands() -> None:
    # Guards the next test against an empty or renamed app.
    assert {"create", "update", "rollback", "delete", "query"} <= set(_subcommands())


def test_every_endpoints_subcommand_is_documented() -> None:
    text = _text()
    missing = [
        name
        for name in _subcommands()
        if not re.search(rf"`cvdeploy endpoints {re.escape(name)}\b", text)
    ]
    assert not missing, f"{DOC} does not document `cvdeploy endpoints` {', '.join(missing)}"
