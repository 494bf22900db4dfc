"""Billing killed with SIGKILL and restarted: the ledger ends up equal to the served events,
no charge lost and none doubled.

Each against both ledgers, SQLite and PostgreSQL. (a) dies exactly between the ledger's
inserts and the COMMIT (a driver process passes the consumer a `before_commit` hook that kills
it); (b) `adstream billing` is killed at random points of a long run, a few times, and
restarted each time.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path
from subprocess import DEVNULL, PIPE

from streams.billing.ledger import Ledger
from tests.billing.support import (
    ROOT,
    Topic,
    billing_command,
    billing_env,
    charges_in,
    ledger_state,
    publish_mixed,
    run_billing,
    run_process,
)


def assert_sound(target: str) -> None:
    """An SQLite file passes its integrity check (PostgreSQL's server keeps its own)."""
    if Path(target).is_file():
        with sqlite3.connect(target) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_sigkill_between_insert_and_commit(topic: Topic, ledger_target: str) -> None:
    expected = await publish_mixed(topic, 1000, seed=1)
    ledger = ledger_target
    env = billing_env(topic.bootstrap, topic.prefix)
    killed = await run_process(
        [sys.executable, "-m", "tests.billing.crash_driver", ledger, topic.name, "4", "100"],
        env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    seen = int(killed.stdout.split("dying with ")[1].split()[0])

    assert_sound(ledger)
    with Ledger.open(ledger, read_only=True) as reopened:
        offsets = reopened.offsets()
    after_crash = ledger_state(ledger)
    # Three batches committed; the fourth, written but not committed, is gone with its offsets.
    assert 0 < len(after_crash.charges) < seen
    assert after_crash == expected.before(offsets)

    finished = await run_billing(env, "--ledger", ledger, "--until-caught-up")
    assert finished.returncode == 0, finished.stderr
    assert ledger_state(ledger) == expected
    assert_sound(ledger)


async def test_sigkill_at_random_points_then_restart(topic: Topic, ledger_target: str) -> None:
    expected = await publish_mixed(topic, 3000, seed=2)
    ledger = ledger_target
    env = billing_env(topic.bootstrap, topic.prefix)
    command = billing_command("--ledger", ledger, "--until-caught-up", "--batch-size", "50")
    rng = random.Random()
    kill_at = sorted(rng.sample(range(100, len(expected.charges) - 300), 4))
    kills = 0
    for threshold in kill_at:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, cwd=ROOT, stdout=DEVNULL, stderr=PIPE
        )
        deadline = time.monotonic() + 30
        while process.returncode is None and charges_in(ledger) < threshold:
            assert time.monotonic() < deadline, "billing made no progress"
            await asyncio.sleep(0.005)
        await asyncio.sleep(rng.uniform(0, 0.02))
        if process.returncode is None:
            process.kill()
            kills += 1
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode in (0, -signal.SIGKILL), stderr.decode()
        assert_sound(ledger)
        with Ledger.open(ledger, read_only=True) as reopened:
            offsets = reopened.offsets()
        assert ledger_state(ledger) == expected.before(offsets)
    assert kills >= 2, f"only {kills} kills landed mid-run (thresholds {kill_at})"

    finished = await run_billing(env, "--ledger", ledger, "--until-caught-up")
    assert finished.returncode == 0, finished.stderr
    assert ledger_state(ledger) == expected
