"""The layers of the code, checked in a fresh interpreter: what each part may load.

Offline commands (audit, billing, campaign files) and the edge's library run where no worker
runs and must not need Faust; the event schema is the bottom layer, needing no I/O library."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(module: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing `module`."""
    code = f"import sys, {module}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module",
    ["streams.audit.verify", "streams.audit.replay", "streams.billing.consumer", "streams.admin"],
)
def test_offline_commands_do_not_load_faust(module: str) -> None:
    assert "faust" not in loaded_after(module)


@pytest.mark.parametrize("module", ["streams.edge", "streams.lookaside"])
def test_what_edges_import_does_not_load_faust(module: str) -> None:
    assert "faust" not in loaded_after(module)


def test_the_event_schema_is_the_bottom_layer() -> None:
    loaded = loaded_after("models, models.events, models.codec, models.ad")
    assert "streams" not in loaded
    assert not loaded & {"httpx", "aiohttp", "redis", "aiokafka", "kafka", "lxml", "faust"}


def test_the_optional_drivers_load_only_when_used() -> None:
    """matplotlib (`--plot`) and the PostgreSQL driver (`--ledger postgresql://`) are loaded
    by the commands that need them, at the moment they do."""
    loaded = loaded_after("streams.cli.audit, streams.cli.billing, streams.cli.demo")
    assert not loaded & {"matplotlib", "psycopg"}
