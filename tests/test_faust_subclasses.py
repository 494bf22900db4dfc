"""adstream's Faust subclasses are what the app runs on, are marked as overrides, and run only
on the faust-streaming and aiokafka releases they were written for."""

from __future__ import annotations

import inspect
import re
import zlib
from pathlib import Path

import faust
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata
from faust.transport import by_url

from streams.worker import assignor, committed_store, kafka_transport, recovery
from streams.worker.faust_version import WRITTEN_FOR, UnsupportedRelease, check_faust_version
from streams.worker.kafka_transport import Transport, broker_url, fetch_max_wait_ms

SUBCLASSES = [
    kafka_transport.Transport,
    kafka_transport.Consumer,
    kafka_transport.ConsumerThread,
    kafka_transport.Producer,
    recovery.Recovery,
    recovery.TableManager,
    recovery.ChangelogReads,
    recovery.RestoredTable,
    assignor.PartitionAssignor,
    committed_store.Store,
]


def test_the_broker_url_runs_the_app_on_adstreams_transport() -> None:
    url = broker_url("127.0.0.1:9092", fetch_max_wait_ms=20)
    assert by_url(url) is Transport
    app = faust.App("subclasses", broker=url, store="memory://")
    assert type(app.transport) is Transport
    assert app.transport.Consumer is kafka_transport.Consumer
    assert app.transport.Producer is kafka_transport.Producer
    assert fetch_max_wait_ms(app.conf.broker_consumer) == 20


@pytest.mark.parametrize("subclass", SUBCLASSES, ids=lambda cls: cls.__name__)
def test_every_override_is_marked(subclass: type) -> None:
    """A method that replaces Faust's says so, and one Faust renamed or dropped is found."""
    for name, value in vars(subclass).items():
        function = value.fget if isinstance(value, property) else value
        if not inspect.isfunction(function):
            continue
        inherited = any(name in vars(base) for base in subclass.__mro__[1:])
        assert getattr(function, "__override__", False) == inherited, f"{subclass}.{name}"


def test_the_installed_releases_are_the_ones_pinned_and_written_for() -> None:
    constraints = Path(__file__).parent.parent / "constraints.txt"
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", constraints.read_text(), re.MULTILINE))
    assert {name: pins[name] for name in WRITTEN_FOR} == WRITTEN_FOR
    check_faust_version()


def test_a_worker_refuses_another_faust_release() -> None:
    def installed(name: str) -> str:
        return "0.16.0" if name == "faust-streaming" else WRITTEN_FOR[name]

    with pytest.raises(UnsupportedRelease, match=r"'faust-streaming': '0\.16\.0'.*constraints"):
        check_faust_version(installed)


def test_every_table_tells_the_recovery_what_it_restores() -> None:
    """A table that did not would look, once restored, as if its restore had missed records:
    the worker would exit at every start instead."""
    app = faust.App(
        "subclasses",
        broker=broker_url("127.0.0.1:9092", fetch_max_wait_ms=20),
        store="memory://",
        Table=recovery.RestoredTable,
        TableManager=recovery.TableManager,
    )
    assert isinstance(app.tables, recovery.TableManager)
    assert isinstance(app.tables.recovery, recovery.Recovery)
    assert isinstance(app.Table("noted", partitions=1), recovery.ChangelogReads)
    with pytest.raises(TypeError, match="ChangelogReads"):
        app.GlobalTable("unnoted", partitions=1)


def test_a_static_member_takes_back_the_assignment_of_its_earlier_start() -> None:
    """Restarted on another port, a static member is handed the assignment made for its
    previous start, which names the web URL it had then (Faust's own assignor asserts)."""
    app = faust.App(
        "subclasses",
        broker=broker_url("127.0.0.1:9092", fetch_max_wait_ms=20),
        store="memory://",
        web_port=7002,
        PartitionAssignor=assignor.PartitionAssignor,
    )
    earlier, now = "http://127.0.0.1:7001", str(app.conf.canonical_url)
    made = ClientMetadata(
        assignment=ClientAssignment(actives={}, standbys={}),
        url=earlier,
        changelog_distribution={earlier: {"t-seen-changelog": [0]}, "http://peer:1": {}},
    )
    handed = ConsumerProtocolMemberAssignment(0, [], zlib.compress(made.dumps()))
    taken = app.assignor
    assert isinstance(taken, assignor.PartitionAssignor)
    taken.on_assignment(handed)
    assert taken.changelog_distribution == {
        now: {"t-seen-changelog": [0]},
        "http://peer:1": {},
    }
