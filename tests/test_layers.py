"""The layers of the code, checked in a fresh interpreter: what each part may load.

Offline commands (audit, billing, campaign files) run where no worker runs and must not need
Faust; the event schema is the bottom layer."""

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
