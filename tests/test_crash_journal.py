"""The crash journal's rules: what was in flight at a crash becomes a suspect, suspects narrow
with each crash, and a suspect's messages are taken apart, then set aside."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.worker.crash_journal import CrashJournal, Span, Suspect, after_crash, handling


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


@dataclass
class Event:
    message: Message


def events(topic: str, partition: int, *offsets: int) -> list[Event]:
    return [Event(Message(topic, partition, offset)) for offset in offsets]


def test_suspects_narrow_to_the_overlap_and_count_crashes() -> None:
    first = after_crash([], [Span("t", 0, 100, 199), Span("t", 1, 5, 9)])
    assert first == [Suspect(Span("t", 0, 100, 199), 1), Suspect(Span("t", 1, 5, 9), 1)]
    second = after_crash(first, [Span("t", 0, 150, 250)])
    assert second[0] == Suspect(Span("t", 0, 150, 199), 2)
    assert second[1] == first[1]
    # A span on another partition or past the suspect starts a suspect of its own.
    third = after_crash(second, [Span("t", 0, 300, 300)])
    assert third[-1] == Suspect(Span("t", 0, 300, 300), 1)


def test_messages_of_a_twice_crashed_suspect_are_taken_apart_then_set_aside() -> None:
    once = [Suspect(Span("t", 0, 10, 20), 1)]
    assert handling(once, "t", 0, 15) == "batch"
    twice = [Suspect(Span("t", 0, 10, 20), 2)]
    assert handling(twice, "t", 0, 15) == "alone"
    assert handling(twice, "t", 0, 21) == "batch"
    assert handling(twice, "t", 1, 15) == "batch"
    assert handling(twice, "u", 0, 15) == "batch"
    pinned = [Suspect(Span("t", 0, 15, 15), 3)]
    assert handling(pinned, "t", 0, 15) == "set_aside"


def test_a_crash_during_a_batch_is_found_on_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    journal = CrashJournal.open(path)
    batch = events("t", 0, 10, 11, 12) + events("t", 1, 4)
    assert list(journal.plan(batch)) == [("batch", batch)]
    journal.begin(batch)
    journal.end(batch)
    journal.begin(batch)
    journal.close()  # the process dies here, mid-batch
    reopened = CrashJournal.open(path)
    assert reopened.suspects == [
        Suspect(Span("t", 0, 10, 12), 1),
        Suspect(Span("t", 1, 4, 4), 1),
    ]
    reopened.begin(batch)
    reopened.close()  # and again
    third = CrashJournal.open(path)
    plan = list(third.plan(events("t", 0, 9, 10, 11, 12, 13)))
    assert [(how, [e.message.offset for e in run]) for how, run in plan] == [
        ("batch", [9]),
        ("alone", [10]),
        ("alone", [11]),
        ("alone", [12]),
        ("batch", [13]),
    ]
    # Once processed past a suspect's last offset, it is forgotten.
    third.end(events("t", 0, 9, 10, 11, 12, 13))
    assert third.suspects == [Suspect(Span("t", 1, 4, 4), 2)]


def test_an_unreadable_journal_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_bytes(b"\x00garbage")
    assert CrashJournal.open(path).suspects == []
