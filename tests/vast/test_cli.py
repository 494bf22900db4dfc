"""`adstream vast resolve`, run as a real process against the test server."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs

from tests.upstream import VastServer, inline, vast, wrapper


async def adstream(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    assert not stderr, stderr.decode()
    return process.returncode, stdout.decode()


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
