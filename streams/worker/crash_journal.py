"""The crash journal: a batch that brings the worker down again and again is taken apart,
not looped on.

Every failure of one message ends in its dead letter (`Outputs.dead_letter_on_failure`), but
some failures take the whole process with them: a crash in native code, memory exhaustion, a
failed write. A restarted worker reads the same batch again and, if the batch is the cause,
dies again, on every restart, and in a consumer group on the next worker too. So each stage
journals what it is processing, in its own file under the worker's data directory:

- before a batch, the offsets it holds (`Span`s) are written as *in flight*; once the batch
  has been processed they are cleared;
- at start, spans still in flight are what the previous run died processing. Each becomes a
  *suspect*, or narrows the suspect it overlaps to the overlap and counts one more crash;
- messages of a suspect with `CRASHES_BEFORE_ISOLATING` crashes are processed one at a time,
  each journaled alone, so the next crash names the one message; a single-message suspect
  with that many crashes is dead-lettered (reason `crash_loop`) without being processed.

So with a batch of many messages the third start finds the culprit and the fourth sets it
aside; a batch of one is set aside on the third start. A suspect is forgotten once a batch
past its last offset has been processed.

The file is rewritten in place (one `pwrite` and `ftruncate` per batch, no fsync): it has to
survive the process, not the machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

log = logging.getLogger(__name__)

CRASHES_BEFORE_ISOLATING = 2
"""Crashes in a row on the same offsets after which they are taken apart."""
MAX_SUSPECTS = 256
"""Suspects kept at most (the oldest go): partitions that moved away leave theirs behind."""


class Span(msgspec.Struct, frozen=True, array_like=True):
    """Offsets `first..last` (inclusive) of one topic partition."""

    topic: str
    partition: int
    first: int
    last: int

    def overlaps(self, other: Span) -> bool:
        return (
            self.topic == other.topic
            and self.partition == other.partition
            and self.first <= other.last
            and other.first <= self.last
        )


class Suspect(msgspec.Struct, frozen=True, array_like=True):
    span: Span
    crashes: int


class _Journal(msgspec.Struct):
    in_flight: list[Span] = msgspec.field(default_factory=list)
    suspects: list[Suspect] = msgspec.field(default_factory=list)


def after_crash(suspects: Sequence[Suspect], in_flight: Sequence[Span]) -> list[Suspect]:
    """The suspects once the spans `in_flight` are known to have died with the process."""
    result = list(suspects)
    for span in in_flight:
        for i, suspect in enumerate(result):
            if suspect.span.overlaps(span):
                narrowed = Span(
                    span.topic,
                    span.partition,
                    max(span.first, suspect.span.first),
                    min(span.last, suspect.span.last),
                )
                result[i] = Suspect(narrowed, suspect.crashes + 1)
                break
        else:
            result.append(Suspect(span, 1))
    return result[-MAX_SUSPECTS:]


Handling = Literal["batch", "alone", "set_aside"]


def handling(suspects: Sequence[Suspect], topic: str, partition: int, offset: int) -> Handling:
    """How one message is to be processed: with its batch, alone, or not at all."""
    for suspect in suspects:
        span = suspect.span
        if (
            suspect.crashes >= CRASHES_BEFORE_ISOLATING
            and span.topic == topic
            and span.partition == partition
            and span.first <= offset <= span.last
        ):
            return "set_aside" if span.first == span.last else "alone"
    return "batch"


def spans_of(events: Sequence[Any]) -> list[Span]:
    """The offsets a batch of Faust events holds, one span per topic partition."""
    bounds: dict[tuple[str, int], tuple[int, int]] = {}
    for event in events:
        message = event.message
        tp = (message.topic, message.partition)
        first, last = bounds.get(tp, (message.offset, message.offset))
        bounds[tp] = (min(first, message.offset), max(last, message.offset))
    return [Span(topic, partition, *offsets) for (topic, partition), offsets in bounds.items()]


class CrashJournal:
    """One stage's journal file; `open` reads what the previous run left in flight."""

    def __init__(self, path: Path, suspects: list[Suspect]) -> None:
        self.path = path
        self.suspects = suspects
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._encoder = msgspec.json.Encoder()
        self._write(_Journal(suspects=suspects))

    @classmethod
    def open(cls, path: Path) -> CrashJournal:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            previous = msgspec.json.decode(path.read_bytes() or b"{}", type=_Journal)
        except FileNotFoundError:
            previous = _Journal()
        except msgspec.DecodeError:
            log.warning("crash journal %s unreadable; starting a new one", path)
            previous = _Journal()
        suspects = previous.suspects
        if previous.in_flight:
            suspects = after_crash(suspects, previous.in_flight)
            log.warning(
                "the last run died processing %s; suspects now %s",
                previous.in_flight,
                suspects,
            )
        return cls(path, suspects)

    def plan(self, events: Sequence[Any]) -> Iterator[tuple[Handling, Sequence[Any]]]:
        """The batch in order, cut where a suspect's messages are to be taken apart."""
        if not self.suspects:
            yield "batch", events
            return
        run: list[Any] = []
        for event in events:
            message = event.message
            how = handling(self.suspects, message.topic, message.partition, message.offset)
            if how == "batch":
                run.append(event)
                continue
            if run:
                yield "batch", run
                run = []
            yield how, [event]
        if run:
            yield "batch", run

    def begin(self, events: Sequence[Any]) -> None:
        """`events` are about to be processed."""
        self._write(_Journal(spans_of(events), self.suspects))

    def end(self, events: Sequence[Any]) -> None:
        """`events` have been processed: forget them and every suspect they passed."""
        if self.suspects:
            done = spans_of(events)
            self.suspects = [
                suspect
                for suspect in self.suspects
                if not any(
                    span.topic == suspect.span.topic
                    and span.partition == suspect.span.partition
                    and span.last >= suspect.span.last
                    for span in done
                )
            ]
        self._write(_Journal(suspects=self.suspects))

    def _write(self, journal: _Journal) -> None:
        data = self._encoder.encode(journal)
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def close(self) -> None:
        os.close(self._fd)
