"""The faust-streaming (and aiokafka) release adstream's Faust subclasses were written for.

`streams.worker.kafka_transport`, `streams.worker.recovery`, `streams.worker.commit_protocol`
and `streams.worker.skipped_events` override and read Faust's and aiokafka's internals, which
change between releases without notice: a worker refuses to start on any other release than
the one constraints.txt pins, rather than run fixes that may no longer fix anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import version

WRITTEN_FOR: Mapping[str, str] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
"""Distribution -> the release the subclasses were read against (constraints.txt's pins)."""


class UnsupportedRelease(RuntimeError):
    """faust-streaming or aiokafka is not the release adstream's subclasses were written for."""


def check_faust_version(installed: Callable[[str], str] = version) -> None:
    """Raise `UnsupportedRelease` unless the installed releases are `WRITTEN_FOR`'s."""
    found = {name: installed(name) for name in WRITTEN_FOR}
    wrong = {name: release for name, release in found.items() if release != WRITTEN_FOR[name]}
    if wrong:
        raise UnsupportedRelease(
            "adstream's Faust subclasses (streams.worker.kafka_transport, recovery, "
            f"commit_protocol, skipped_events) were written for {dict(WRITTEN_FOR)}, but "
            f"{wrong} is installed: install the versions constraints.txt pins "
            "(make .venv/.installed), or read the subclasses against the new release first"
        )
