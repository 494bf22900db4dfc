"""The `adstream` command at its edges: bad settings, an unreachable broker, a stack started
in another shell, and --json reports, errors included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infra.process import free_port
from tests.cli import run_adstream

CAMPAIGN = {
    "schema": 1,
    "campaign_id": "edge-1",
    "active": True,
    "vast_url": "http://127.0.0.1/vast",
    "cpm": "2",
    "currency": "EUR",
}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ADSTREAM_LOG_LEVEL", "loud"),
        ("ADSTREAM_WEB_PORT", "99999"),
        ("REDIS_URL", "notaurl"),
        ("ADSTREAM_BATCH_SIZE", "0"),
        ("ADSTREAM_PARTITIONS", "0"),
    ],
)
@pytest.mark.parametrize("command", [["worker"], ["campaigns", "load", "FILE"]])
def test_a_bad_setting_names_its_variable_and_exits_without_a_traceback(
    tmp_path: Path, kafka_bootstrap: str, variable: str, value: str, command: list[str]
) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps([CAMPAIGN]))
    args = [str(path) if arg == "FILE" else arg for arg in command]
    result = run_adstream(
        args, kafka_bootstrap=kafka_bootstrap, prefix="never-", env={variable: value}, timeout_s=60
    )
    assert result.returncode == 1, result.stderr
    assert f"Error: bad setting {variable}={value!r}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", [["worker"], ["campaigns", "load", "FILE"], ["demo"], ["publish", "-"]]
)
def test_an_unreachable_broker_is_waited_for_a_bounded_time_then_named(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps([CAMPAIGN]))
    args = [str(path) if arg == "FILE" else arg for arg in command]
    nowhere = f"127.0.0.1:{free_port()}"
    env = {"ADSTREAM_CONNECT_TIMEOUT_S": "2", "REDIS_URL": "redis://127.0.0.1:1/0"}
    # The subprocess's own timeout bounds a hang: it would fail the test with an exception.
    result = run_adstream(args, kafka_bootstrap=nowhere, prefix="never-", env=env, timeout_s=60)
    assert result.returncode == 1, result.stderr
    # One line: neither a traceback nor the Kafka client's line per attempt.
    assert result.stderr.splitlines() == [
        f"Error: no Kafka broker answered at {nowhere} within 2 s; check KAFKA_BOOTSTRAP_SERVERS"
        " (`adstream infra up` starts a local broker)"
    ]


def test_infra_env_prints_the_running_stacks_exports_again(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    run_dir = tmp_path / "run"
    env = {"ADSTREAM_RUN_DIR": str(run_dir)}
    absent = run_adstream(["infra", "env"], kafka_bootstrap=kafka_bootstrap, prefix="", env=env)
    assert absent.returncode == 1 and "not running" in absent.stderr and absent.stdout == ""
    as_json = run_adstream(
        ["infra", "status", "--json"], kafka_bootstrap=kafka_bootstrap, prefix="", env=env
    )
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "error": "not running; start it with `adstream infra up`",
    }
    # A stack recorded the way `infra up` records one, its "processes" alive (this one).
    run_dir.mkdir()
    addresses = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": "redis://127.0.0.1:1/0"}
    state = {"addresses": addresses, "pids": [os.getpid()], "root": str(tmp_path), "logs": "x"}
    (run_dir / "infra.json").write_text(json.dumps(state))
    shown = run_adstream(["infra", "env"], kafka_bootstrap=kafka_bootstrap, prefix="", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        f"export KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap}",
        "export REDIS_URL=redis://127.0.0.1:1/0",
    ]
    status = run_adstream(
        ["infra", "status", "--json"], kafka_bootstrap=kafka_bootstrap, prefix="", env=env
    )
    assert status.returncode == 1  # Redis is not there
    report = json.loads(status.stdout)
    assert report["ok"] is False and report["addresses"] == addresses
    healthy = {service["service"]: service["healthy"] for service in report["services"]}
    assert healthy == {"kafka": True, "redis": False}
    # This shell's commands would reach the same Kafka but another Redis (or none).
    assert report["shell_elsewhere"] == {"REDIS_URL": os.environ.get("REDIS_URL")}
    told = run_adstream(["infra", "status"], kafka_bootstrap=kafka_bootstrap, prefix="", env=env)
    assert told.returncode == 1
    assert "this shell has REDIS_URL=" in told.stderr and "adstream infra env" in told.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" not in told.stderr


async def test_json_reports_of_load_publish_and_billing(
    tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"{unique_name}-"
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps([CAMPAIGN, {**CAMPAIGN, "campaign_id": "edge-2"}]))
    env = {"ADSTREAM_PARTITIONS": "1"}
    loaded = run_adstream(
        ["campaigns", "load", str(path), "--json"],
        kafka_bootstrap=kafka_bootstrap,
        prefix=prefix,
        env=env,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == {
        "ok": True,
        "topic": f"{prefix}campaigns",
        "campaigns": [
            {"campaign_id": "edge-1", "version": 0},
            {"campaign_id": "edge-2", "version": 1},
        ],
    }
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    refused = run_adstream(
        ["campaigns", "load", str(bad), "--json"], kafka_bootstrap=kafka_bootstrap, prefix=prefix
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"].startswith(f"{bad}: cannot read")

    published = run_adstream(
        ["publish", "--synthetic", "5", "--campaign", "edge-1", "--json"],
        kafka_bootstrap=kafka_bootstrap,
        prefix=prefix,
    )
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout) == {
        "ok": True,
        "topic": f"{prefix}ad-requests",
        "published": 5,
        "rejected": 0,
    }

    ledger = tmp_path / "ledger.sqlite"
    billed = run_adstream(
        ["billing", "--ledger", str(ledger), "--until-caught-up", "--json"],
        kafka_bootstrap=kafka_bootstrap,
        prefix=prefix,
    )
    assert billed.returncode == 0, billed.stderr
    report = json.loads(billed.stdout)
    assert report["ok"] is True and report["caught_up"] is True and report["charges"] == 0
    missing = run_adstream(
        ["billing", "report", "--ledger", str(tmp_path / "none.sqlite"), "--json"],
        kafka_bootstrap=kafka_bootstrap,
        prefix=prefix,
    )
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["ok"] is False
