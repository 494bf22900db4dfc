"""What every command does before its work: read the settings, reach the broker, and fail
with one line (or one JSON object with --json) rather than a traceback."""

from __future__ import annotations

import asyncio
from typing import IO, Any

import click
import msgspec

from streams.admin import BrokerUnreachable, wait_for_broker
from streams.settings import BadSetting, Settings


class CommandFailed(click.ClickException):
    """Exit 1 with the message: as `Error: ...` on stderr, or with --json as
    `{"ok": false, "error": ...}` on stdout, where the command's report would have been."""

    def __init__(self, message: str, *, as_json: bool = False) -> None:
        super().__init__(message)
        self.as_json = as_json

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json:
            click.echo(json_text({"ok": False, "error": self.message}))
        else:
            super().show(file)


def json_text(document: object) -> str:
    return msgspec.json.encode(document).decode()


def settings_from_env(*, as_json: bool = False) -> Settings:
    try:
        return Settings.from_env()
    except BadSetting as exc:
        raise CommandFailed(str(exc), as_json=as_json) from None


def reach_broker(settings: Settings, *, as_json: bool = False) -> None:
    """Wait at most ADSTREAM_CONNECT_TIMEOUT_S for the broker to answer."""
    try:
        asyncio.run(wait_for_broker(settings.kafka_bootstrap_servers, settings.connect_timeout_s))
    except BrokerUnreachable as exc:
        raise CommandFailed(str(exc), as_json=as_json) from None
