"""A decision worker run as a child process (`python -m streams.cli worker`), the way the demo
and the pipeline tests run one: started, probed until ready, asked for its state, stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from infra.process import tail
from streams.lookaside import StateView
from streams.settings import Settings


class WorkerFailed(RuntimeError):
    """The worker exited or did not become ready; the message ends with its log's last lines."""


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    web_port: int
    command: tuple[str, ...] = ("-m", "streams.cli", "worker")
    """What `python` runs: the production entry point unless a test gives its driver."""
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_settings(cls, settings: Settings, log_path: Path) -> WorkerProcess:
        """A worker configured by `settings` (passed as its environment), logging to a file."""
        return cls({**os.environ, **settings.as_env()}, log_path, settings.web_port)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own session: a signal meant for the worker reaches its whole process group,
            # and a Ctrl-C in the caller's terminal is the caller's to pass on.
            self.proc = subprocess.Popen(
                [sys.executable, *self.command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until `/adstream/ready/` answers 200: partitions assigned and tables restored."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running():
                    raise WorkerFailed(f"the worker exited during start-up:\n{self.log_tail()}")
                try:
                    response = await client.get(self.url("/adstream/ready/"))
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                await asyncio.sleep(0.3)
        raise WorkerFailed(f"the worker was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    async def state(self, campaign_id: str, user_id: str | None = None) -> StateView:
        """What the worker holds for a campaign (and a user); its web route finds the owner."""
        params = {"user": user_id} if user_id else {}
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(self.url(f"/adstream/state/{campaign_id}/"), params=params)
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=StateView)

    async def wait_for_version(self, campaign_id: str, version: int, timeout_s: float) -> None:
        """Until the campaign's configuration at offset `version` of `campaigns` is in force."""
        deadline = time.monotonic() + timeout_s
        while (await self.state(campaign_id)).version != version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"campaign {campaign_id} version {version} never in force")
            await asyncio.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Send `sig` to the worker's process group, then SIGKILL after `timeout_s`; returns
        the exit status (negative: killed by that signal), None if it was never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode
