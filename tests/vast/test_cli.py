"""`adstream vast resolve`, run as a real process against the test server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.upstream import VastServer, inline, vast, wrapper


async def run(*args: str | bytes, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`adstream ARGS` with `env` added to the environment: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def adstream(*args: str | bytes, env: dict[str, str] | None = None) -> tuple[int, str]:
    code, out, err = await run(*args, env=env)
    assert not err, err
    return code, out


async def test_resolve_json(vast_server: VastServer) -> None:
    end = vast_server.add(vast(inline(ad_id="the-ad", impression="http://p.invalid/[DOMAIN]")))
    root = vast_server.add(vast(wrapper(end)))

    code, out = await adstream(
        "vast", "resolve", root, "--json", "--param", "domain=example.org", "--param", "x=1=2"
    )

    assert code == 0
    result: dict[str, Any] = json.loads(out)
    assert (result["status"], result["error_code"]) == ("inline", None)
    assert [ad["id"] for ad in result["ads"]] == ["the-ad"]
    assert result["impressions"] == [
        "http://pixels.invalid/wrapper-impression",
        "http://p.invalid/[DOMAIN]",  # handed on: filled by whoever fires it
    ]
    assert [(hop["url"].split("?")[0], hop["status"]) for hop in result["chain"]] == [
        (root, 200),
        (end, 200),
    ]
    assert parse_qs(vast_server.seen(root)[0].query) == {"domain": ["example.org"], "x": ["1=2"]}


async def test_resolve_text_and_exit_code_for_no_ad(vast_server: VastServer) -> None:
    root = vast_server.add(vast(wrapper(vast_server.add(vast()))))

    code, out = await adstream("vast", "resolve", root)

    assert code == 1
    assert out.splitlines()[0] == "status: no_ad (303)"
    chain = out.split("chain:\n")[1].split("errors:")[0].splitlines()
    assert [line.split()[0] for line in chain] == ["200", "200"]
    assert chain[0].endswith(root)
    assert "  303 " in out.split("errors:")[1]


async def test_a_malformed_param_is_a_usage_error(vast_server: VastServer) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        "vast",
        "resolve",
        "http://x.invalid/",
        "--param",
        "x",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"is not KEY=VALUE" in stderr


GUARD_OFF = {"ADSTREAM_BLOCK_PRIVATE_ADDRESSES": "", "ADSTREAM_ALLOWED_NETWORKS": ""}


async def resolves(url: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    code, out = await adstream(
        "vast", "resolve", url, "--json", *args, env={**GUARD_OFF, **(env or {})}
    )
    result: dict[str, Any] = json.loads(out)
    assert code == (0 if result["status"] == "inline" else 1)
    return result


def refused(result: dict[str, Any]) -> bool:
    return result["error_code"] == 301 and "not a global address" in result["errors"][0]["message"]


async def test_the_ssrf_guard_is_turned_on_by_option_or_environment(
    vast_server: VastServer,
) -> None:
    url = vast_server.add(vast(inline()))

    assert refused(await resolves(url, "--block-private-addresses"))
    on = {"ADSTREAM_BLOCK_PRIVATE_ADDRESSES": "true"}
    assert refused(await resolves(url, env=on))
    assert vast_server.seen(url) == []

    assert (await resolves(url))["status"] == "inline"  # off by default
    assert (await resolves(url, "--no-block-private-addresses", env=on))["status"] == "inline"
    allowed = {**on, "ADSTREAM_ALLOWED_NETWORKS": "10.0.0.0/8, 127.0.0.1/32"}
    assert (await resolves(url, env=allowed))["status"] == "inline"
    assert (await resolves(url, "--allowed-networks", "127.0.0.0/8", env=on))["status"] == "inline"
    assert refused(await resolves(url, "--allowed-networks", "10.0.0.0/8", env=allowed))
    assert len(vast_server.seen(url)) == 4


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--allowed-networks", "intranet"), {}, "Invalid value for '--allowed-networks'"),
        (
            (),
            {"ADSTREAM_ALLOWED_NETWORKS": "10.0.0.1/8"},
            "ADSTREAM_ALLOWED_NETWORKS='10.0.0.1/8': 10.0.0.1/8 has",
        ),
    ],
)
async def test_a_bad_network_is_a_clear_error(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    code, _, err = await run("vast", "resolve", "http://x.invalid/", *args, env=env)
    assert code in (1, 2)
    assert message in err
    assert "Traceback" not in err


async def test_a_param_given_twice_is_a_usage_error() -> None:
    # As in an ad request, where a key given twice is invalid: no silent choice of one.
    args = ("--param", "account=A", "--param", "account=EVIL")
    code, _, err = await run("vast", "resolve", "http://x.invalid/", *args)
    assert code == 2
    assert "'account' is given twice" in err


@pytest.mark.parametrize(
    "args",
    [
        (b"http://x.invalid/", b"--param", b"domain=caf\xe9"),  # Latin-1, as a shell may pass it
        (b"http://x.invalid/", b"--param", b"\xff=1"),
        (b"http://x.invalid/\xff",),
    ],
    ids=["value", "key", "url"],
)
async def test_arguments_that_are_not_utf8_are_a_usage_error(args: tuple[bytes, ...]) -> None:
    code, _, err = await run("vast", "resolve", *args)
    assert code == 2
    assert "not UTF-8" in err
    assert "Traceback" not in err
