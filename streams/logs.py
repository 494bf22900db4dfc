"""Structured logs: one JSON object per line, carrying `request_id` and `correlator` when a
record has them (pass them with `extra=`)."""

from __future__ import annotations

import logging
import logging.config
import sys
import time

import msgspec

from streams.log_sampler import LogSampler

_CONTEXT_FIELDS = ("request_id", "correlator", "campaign_id")
_encoder = msgspec.json.Encoder()

TRANSIENT_KAFKA_ERRORS = ("NotLeaderForPartitionError", "LeaderNotAvailableError")
"""What aiokafka warns about, and retries, while a fresh topic's partitions get leaders."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


class TransientRetries(logging.Filter):
    """aiokafka's warnings about retries on a fresh topic (a produce answered "not the
    leader" before the metadata knew one) become debug lines: they resolve by themselves
    within a second and only alarm whoever reads them."""

    def __init__(self, level: str = "info") -> None:
        super().__init__()
        self.shown = logging.getLevelNamesMapping()[level.upper()] <= logging.DEBUG

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiokafka") and record.levelno == logging.WARNING:
            message = record.getMessage()
            if any(error in message for error in TRANSIENT_KAFKA_ERRORS):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return self.shown
        return True


class TimerOverlaps(logging.Filter):
    """mode's "Timer ... is overlapping" warning, once per timer and interval: under load
    the commit timer overlaps on nearly every tick (38% of all lines once), which says no
    more than the first line does. The next line through counts those left out."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.sampler = LogSampler(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "mode.timers" or not str(record.msg).startswith("Timer %s is overlap"):
            return True
        timer = str(record.args[0]) if isinstance(record.args, tuple) and record.args else ""
        left_out = self.sampler.admit(timer, record.created)
        if left_out:
            record.msg = f"{record.msg} ({left_out} more such lines left out)"
        return left_out is not None


def configure(level: str) -> None:
    """JSON lines on stderr, until the Faust worker installs `dict_config`."""
    logging.config.dictConfig(dict_config(level))


def dict_config(level: str) -> dict[str, object]:
    """The logging configuration of a worker process, Faust's own loggers included."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {
            "transient": {"()": TransientRetries, "level": level},
            "overlaps": {"()": TimerOverlaps},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["transient", "overlaps"],
                "stream": sys.stderr,
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
