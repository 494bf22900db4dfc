"""The logging filters every adstream process installs (`streams.logs.dict_config`)."""

from __future__ import annotations

import logging

from streams import logs


def record(
    level: int, message: str, *args: object, name: str = "aiokafka.producer.sender", at: float = 0
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, args, None)
    made.created = at
    return made


def test_transient_kafka_retries_stay_off_the_terminal_unless_debugging() -> None:
    retry = "Got error produce response on topic-partition x, retrying. Error: %s"
    quiet, debugging = logs.TransientRetries("info"), logs.TransientRetries("debug")
    transient = record(logging.WARNING, retry, "NotLeaderForPartitionError")
    assert not quiet.filter(transient)
    assert debugging.filter(record(logging.WARNING, retry, "NotLeaderForPartitionError"))
    assert transient.levelname == "DEBUG"
    assert quiet.filter(record(logging.WARNING, retry, "KafkaTimeoutError"))
    assert quiet.filter(record(logging.WARNING, "NotLeaderForPartitionError", name="streams"))


def test_a_timer_overlapping_is_said_once_per_interval_with_the_count_left_out() -> None:
    overlaps = logs.TimerOverlaps(interval_s=60)
    message = "Timer %s is overlapping (interval=%r runtime=%r)"

    def passed(timer: str, at: float) -> logging.LogRecord | None:
        line = record(logging.WARNING, message, timer, 0.05, 0.2, name="mode.timers", at=at)
        return line if overlaps.filter(line) else None

    first = passed("commit", 0)
    assert first is not None and first.getMessage().endswith("runtime=0.2)")
    assert [passed("commit", t) for t in range(1, 60)] == [None] * 59
    assert passed("other", 30) is not None  # each timer has its own interval
    again = passed("commit", 60)
    assert again is not None
    assert again.getMessage().endswith("(59 more such lines left out)")
    assert overlaps.filter(record(logging.WARNING, "something else", name="mode.timers"))
