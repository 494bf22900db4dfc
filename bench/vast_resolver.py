"""The VAST resolver against bare HTTP clients fetching the same hops.

Run: .venv/bin/python -m bench.vast_resolver [--seconds 2] [--repeat 1] [--hostile]

A one-hop chain (an InLine of ~2 KB) and a three-hop chain (Wrapper -> Wrapper -> InLine) are
served on loopback by an aiohttp server in its own process (pinned to its own core when there
are two), so serving never counts as the client's CPU. Each contender runs at 1 and at 50
concurrent resolutions:

- `resolver`: `VastUpstream.fetch`: fetch, parse, select, merge, macros, chain bookkeeping;
  after its first resolution, parsing and unwrapping come from its memo (`streams.vast.memo`),
  as for a campaign whose upstream answers its requests with the same documents;
- `cold`: the same with a memo that keeps nothing: an upstream whose every answer is new
  (a request id written into its documents), parsing and unwrapping each time;
- `transport`: the resolver's HTTP layer alone (`VastTransport.get`, on its aiohttp session),
  to show what of the resolver's cost is HTTP and what is VAST;
- `httpx`: `httpx.AsyncClient()` as it comes, GETting the same hops and reading each body;
- `aiohttp`: a bare `aiohttp.ClientSession` doing the same: the floor;
- `documents`: `cold`'s work without any I/O: parsing the same hops' bodies, planning,
  merging them and building the unwrapped document (`streams.vast.parse`, `streams.vast.chain`,
  `streams.vast.unwrap`), to show what of the goal's budget VAST itself takes.

Measured per configuration: resolutions per second (wall clock), CPU microseconds per
resolution (the process's CPU time), p50/p99 latency. Prints a table and writes
bench/results/vast_resolver.json, with each contender's ratios to bare aiohttp.

`--hostile` measures the resolver's per-request bounds instead (bench/results/
vast_resolver_hostile.json): for each hostile upstream (a 5,000-Wrapper fallback storm, 50
fallbacks, a pod of 50 Wrappers, a 50-ad 400 KB pod full of macros, documents near the size
bounds, Wrappers that multiply the InLine's creatives), its outcome, hops, the Python memory
one resolution peaks at (tracemalloc), its latency at 10 at once, and meanwhile the latency of
an unrelated one-hop resolution.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from bench._plot import Panel, save_beside
from models.codec import MAX_RECORD_BYTES
from models.context import SessionContext
from streams.vast import VastTransport, VastUpstream, chain, unwrap
from streams.vast.memo import ResolverMemo
from streams.vast.parse import parse_tree
from streams.vast.transport import DEFAULT_MAX_BODY_BYTES

RESULTS = Path(__file__).parent / "results" / "vast_resolver.json"
HOSTILE_RESULTS = RESULTS.with_name("vast_resolver_hostile.json")
HOSTILE_CONCURRENCY = 10
CONCURRENCIES = (1, 50)
WARMUP_S = 0.3
GOAL = 1.5  # the resolver's CPU per resolution, at most this many times bare aiohttp's

Operation = Callable[[], Awaitable[None]]


def inline_document() -> bytes:
    """A typical InLine: one linear creative, ~20 tracking URLs with macros, ~2 KB."""
    events = ["start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "pause"]
    tracking = "".join(
        f'<Tracking event="{event}"><![CDATA[https://t.example.com/{event}'
        f"?cb=[CACHEBUSTING]&ts=[TIMESTAMP]]]></Tracking>"
        for event in events
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><VAST version="4.2"><Ad id="bench-1"><InLine>'
        "<AdSystem>bench</AdSystem><AdTitle>Benchmark ad</AdTitle>"
        "<Error><![CDATA[https://t.example.com/error?code=[ERRORCODE]]]></Error>"
        "<Impression><![CDATA[https://t.example.com/imp?cb=[CACHEBUSTING]&c=[CORRELATOR]]]>"
        "</Impression><Creatives><Creative id='c1' sequence='1'><Linear>"
        f"<Duration>00:00:15</Duration><TrackingEvents>{tracking}</TrackingEvents>"
        "<VideoClicks><ClickThrough><![CDATA[https://advertiser.example.com/]]></ClickThrough>"
        "<ClickTracking><![CDATA[https://t.example.com/click?cb=[CACHEBUSTING]]]>"
        "</ClickTracking></VideoClicks><MediaFiles>"
        "<MediaFile delivery='progressive' type='video/mp4' width='1280' height='720'"
        " bitrate='2000'><![CDATA[https://cdn.example.com/ad-720.mp4]]></MediaFile>"
        "<MediaFile delivery='progressive' type='video/mp4' width='640' height='360'"
        " bitrate='800'><![CDATA[https://cdn.example.com/ad-360.mp4]]></MediaFile>"
        "</MediaFiles></Linear></Creative></Creatives></InLine></Ad></VAST>"
    ).encode()


def wrapper_document(next_path: str, name: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><VAST version="4.2"><Ad id="{name}"><Wrapper>'
        f"<AdSystem>bench</AdSystem><VASTAdTagURI><![CDATA[{next_path}?cb=[CACHEBUSTING]]]>"
        f"</VASTAdTagURI><Error><![CDATA[https://t.example.com/{name}/error?e=[ERRORCODE]]]>"
        f"</Error><Impression><![CDATA[https://t.example.com/{name}/imp?cb=[CACHEBUSTING]]]>"
        "</Impression><Creatives><Creative><Linear><TrackingEvents>"
        f'<Tracking event="start"><![CDATA[https://t.example.com/{name}/start]]></Tracking>'
        "</TrackingEvents></Linear></Creative></Creatives></Wrapper></Ad></VAST>"
    ).encode()


DOCUMENTS = {
    "/inline.xml": inline_document(),
    "/w2.xml": wrapper_document("/inline.xml", "w2"),
    "/w1.xml": wrapper_document("/w2.xml", "w1"),
}
CHAINS = {"one-hop": ["/inline.xml"], "three-hop": ["/w1.xml", "/w2.xml", "/inline.xml"]}


def hostile_documents() -> dict[str, bytes]:
    """Hostile upstreams, by path; the cases measured are those under /h/ that start a chain."""
    text = inline_document().decode()
    head, ad = text[: text.index("<Ad ")], text[text.index("<Ad ") : text.index("</VAST>")]

    def document(*ads: str, padding: str = "", size: int = 0) -> bytes:
        body = head + "".join(ads)
        if size:
            padding = "<!--" + padding * ((size - len(body) - 15) // len(padding)) + "-->"
        return (body + padding + "</VAST>").encode()

    def wrapper(n: int, target: str, sequence: str = "", tracking: str = "") -> str:
        return (
            f'<Ad id="w{n}"{sequence}><Wrapper><AdSystem>b</AdSystem><VASTAdTagURI>{target}'
            f"</VASTAdTagURI><Creatives><Creative><Linear><TrackingEvents>{tracking}"
            "</TrackingEvents></Linear></Creative></Creatives></Wrapper></Ad>"
        )

    pod = [ad.replace('id="bench-1"', f'id="p{n}" sequence="{n + 1}"') for n in range(50)]
    bare = "<Creative><Linear><Duration>00:00:15</Duration></Linear></Creative>" * 2000
    bomb = {"/x/bomb0.xml": document(ad.replace("</Creatives>", bare + "</Creatives>"))}
    events = "".join(
        f'<Tracking event="start">https://t.example.com/{n}</Tracking>' for n in range(5000)
    )
    for n in range(1, 5):
        bomb[f"/x/bomb{n}.xml"] = document(wrapper(n, f"/x/bomb{n - 1}.xml", tracking=events))
    return {
        "/x/empty.xml": document(),
        "/h/storm-5000-fallbacks.xml": document(*(wrapper(n, "/x/empty.xml") for n in range(5000))),
        "/h/50-fallbacks.xml": document(*(wrapper(n, "/x/empty.xml") for n in range(50))),
        "/h/pod-of-50-wrappers.xml": document(
            *(wrapper(n, "/inline.xml", f' sequence="{n + 1}"') for n in range(50))
        ),
        "/h/pod-50-ads-400k-macros.xml": document(*pod, padding="[TIMESTAMP]x", size=400_000),
        "/h/under-event-size.xml": document(ad, padding="x", size=MAX_RECORD_BYTES - 16_384),
        "/h/under-body-cap.xml": document(ad, padding="x", size=DEFAULT_MAX_BODY_BYTES - 64),
        "/h/merge-bomb.xml": document(wrapper(5, "/x/bomb4.xml", tracking=events)),
        **bomb,
    }


def serve(port: int, hostile: bool = False) -> None:
    """The upstream, run in its own process."""
    app = web.Application()
    for path, body in (DOCUMENTS | hostile_documents() if hostile else DOCUMENTS).items():

        async def handler(_request: web.Request, body: bytes = body) -> web.Response:
            return web.Response(body=body, content_type="application/xml")

        app.router.add_get(path, handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_port(port: int) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def measure(operation: Operation, concurrency: int, seconds: float) -> dict[str, float]:
    """Run `operation` from `concurrency` workers for `seconds`, after a warm-up."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def worker(until: float, record: bool) -> None:
        while loop.time() < until:
            started = time.perf_counter()
            await operation()
            if record:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(loop.time() + WARMUP_S, False) for _ in range(concurrency)))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(loop.time() + seconds, True) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies.sort()
    count = len(latencies)
    return {
        "per_s": count / wall,
        "cpu_us": cpu / count * 1e6,
        "p50_ms": latencies[count // 2] * 1e3,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1e3,
        "count": count,
    }


Closer = Callable[[], Awaitable[None]]


def contenders(base: str, hops: list[str]) -> dict[str, tuple[Operation, Closer]]:
    """Each contender's resolution of the chain `hops`, and how to close it."""
    urls = [f"{base}{path}?cb=12345678" for path in hops]
    tag = f"{base}{hops[0]}?cb=[CACHEBUSTING]"
    # One context for every resolution: making contexts is the edge's work, not the
    # resolver's, and the resolver does the same work whatever the context holds.
    context = SessionContext.create({"user_id": "bench"})

    def resolution(upstream: VastUpstream) -> Operation:
        async def resolve() -> None:
            result = await upstream.fetch(tag, context=context)
            assert result.status == "inline" and len(result.chain) == len(hops), result

        return resolve

    upstream = VastUpstream()
    keeps_nothing = ResolverMemo(max_entries=1, max_body_bytes=1, max_selection_bytes=1)
    cold = VastUpstream(memo=keeps_nothing)

    transport = VastTransport()

    async def transport_only() -> None:
        for url in urls:
            fetched = await transport.get(url)
            assert fetched.status == 200 and fetched.body

    client = httpx.AsyncClient()

    async def bare_httpx() -> None:
        for url in urls:
            response = await client.get(url)
            assert response.status_code == 200 and response.content

    session = aiohttp.ClientSession()

    async def bare_aiohttp() -> None:
        for url in urls:
            async with session.get(url) as response:
                assert response.status == 200 and await response.read()

    bodies = [DOCUMENTS[path] for path in hops]
    rules = chain.Rules(allow_multiple_ads=True)

    async def documents() -> None:
        wrappers = []
        above = []
        for body in bodies:
            parsed = parse_tree(body)
            document = parsed.document
            ad = chain.plan(document, rules).targets[0]
            element = parsed.elements[document.ads.index(ad)]
            if ad.wrapper is not None:
                wrappers.append(ad)
                above.append((element, document.namespace))
                continue
            resolved = chain.resolve_ad(ad, wrappers)
            ad_element = unwrap.unwrap_ad(element, document.namespace, document.version, above)
            assert unwrap.document([ad_element], [resolved.sequence])
            assert resolved.wrappers == len(hops) - 1

    async def no_close() -> None:
        pass

    return {
        "resolver": (resolution(upstream), upstream.aclose),
        "cold": (resolution(cold), cold.aclose),
        "transport": (transport_only, transport.aclose),
        "httpx": (bare_httpx, client.aclose),
        "aiohttp": (bare_aiohttp, session.close),
        "documents": (documents, no_close),
    }


async def run_hostile(base: str, seconds: float) -> list[dict[str, Any]]:
    """Each hostile case: its outcome and peak memory alone, then its latency at
    `HOSTILE_CONCURRENCY` at once beside an unrelated one-hop resolution's."""
    rows: list[dict[str, Any]] = []
    context = SessionContext.create({"user_id": "bench"})
    async with VastUpstream(fire_error_pixels=False) as upstream:
        normal = f"{base}/inline.xml"
        for path in (p for p in hostile_documents() if p.startswith("/h/")):
            url = f"{base}{path}"
            await upstream.fetch(url, context=context)  # warm
            cpu = time.process_time()
            result = await upstream.fetch(url, context=context)
            cpu = time.process_time() - cpu
            tracemalloc.start()  # apart: tracing slows allocation several times over
            await upstream.fetch(url, context=context)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()

            async def hostile(url: str = url) -> None:
                await upstream.fetch(url, context=context)

            async def unrelated() -> None:
                assert (await upstream.fetch(normal, context=context)).status == "inline"

            loaded, beside = await asyncio.gather(
                measure(hostile, HOSTILE_CONCURRENCY, seconds), measure(unrelated, 1, seconds)
            )
            rows.append(
                {
                    "case": path.removeprefix("/h/").removesuffix(".xml"),
                    "outcome": result.status,
                    "code": result.error_code,
                    "ads": len(result.ads),
                    "hops": len(result.chain),
                    "cpu_ms_alone": cpu * 1e3,
                    "peak_python_mb": peak / 1e6,
                    "p50_ms": loaded["p50_ms"],
                    "p99_ms": loaded["p99_ms"],
                    "unrelated_p50_ms": beside["p50_ms"],
                    "unrelated_p99_ms": beside["p99_ms"],
                }
            )
    return rows


def hostile_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'case':<26} {'outcome':<7} {'code':>4} {'ads':>3} {'hops':>4} {'CPU ms':>7} "
        f"{'peak MB':>7} {'p50 ms':>7} {'p99 ms':>7} {'unrel p50':>9} {'unrel p99':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['case']:<26} {row['outcome']:<7} {row['code'] or '':>4} {row['ads']:>3} "
            f"{row['hops']:>4} {row['cpu_ms_alone']:>7.1f} {row['peak_python_mb']:>7.1f} "
            f"{row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} {row['unrelated_p50_ms']:>9.1f} "
            f"{row['unrelated_p99_ms']:>9.1f}"
        )
    return "\n".join(lines)


async def run(seconds: float, repeat: int, hostile: bool = False) -> list[dict[str, Any]]:
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(port, hostile), daemon=True
    )
    server.start()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        # Client and upstream on separate cores, so neither's CPU time is the other's.
        os.sched_setaffinity(server.pid or 0, {cores[1]})
        os.sched_setaffinity(0, {cores[0]})
    rows: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(10):
            await wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        if hostile:
            return await run_hostile(base, seconds)
        for chain, hops in CHAINS.items():
            for concurrency in CONCURRENCIES:
                runs: dict[str, list[dict[str, float]]] = {}
                for _ in range(repeat):
                    # Fresh clients per run; contenders interleave, so drift hits all alike.
                    for name, (operation, close) in contenders(base, hops).items():
                        runs.setdefault(name, []).append(
                            await measure(operation, concurrency, seconds)
                        )
                        await close()
                medians = {name: _median(samples) for name, samples in runs.items()}
                floor = medians["aiohttp"]
                for name, numbers in medians.items():
                    rows.append(
                        {
                            "chain": chain,
                            "concurrency": concurrency,
                            "contender": name,
                            **numbers,
                            "cpu_vs_aiohttp": numbers["cpu_us"] / floor["cpu_us"],
                            "rate_vs_aiohttp": numbers["per_s"] / floor["per_s"],
                        }
                    )
    finally:
        server.terminate()
        server.join()
    return rows


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'chain':<10} {'conc':>4} {'contender':<10} {'res/s':>8} {'CPU us':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU x':>6} {'rate x':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['chain']:<10} {row['concurrency']:>4} {row['contender']:<10} "
            f"{row['per_s']:>8.0f} {row['cpu_us']:>8.0f} {row['p50_ms']:>7.2f} "
            f"{row['p99_ms']:>7.2f} {row['cpu_vs_aiohttp']:>6.2f} {row['rate_vs_aiohttp']:>6.2f}"
        )
    return "\n".join(lines)


def panels(rows: list[dict[str, Any]]) -> list[Panel]:
    """What the picture beside the report shows: CPU and rate of each contender and case."""

    def label(row: dict[str, Any]) -> str:
        return f"{row['contender']}, {row['chain']} x{row['concurrency']}"

    return [
        Panel("CPU us per resolution", {label(row): row["cpu_us"] for row in rows}),
        Panel("resolutions/s", {label(row): row["per_s"] for row in rows}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--hostile", action="store_true", help="the per-request bounds instead")
    args = parser.parse_args()
    if args.hostile:
        main_hostile(args.seconds)
        return
    rows = asyncio.run(run(args.seconds, args.repeat))
    print(table(rows))
    worst = max(r["cpu_vs_aiohttp"] for r in rows if r["contender"] == "resolver")
    print(f"\nresolver CPU per resolution, worst case: {worst:.2f}x bare aiohttp (goal {GOAL}x)")
    cold = max(r["cpu_vs_aiohttp"] for r in rows if r["contender"] == "cold")
    print(f"the same with every document new (nothing reused), worst case: {cold:.2f}x")
    floor = max(r["cpu_vs_aiohttp"] for r in rows if r["contender"] == "documents")
    print(f"of which VAST work without I/O, worst case: {floor:.2f}x bare aiohttp")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python -m bench.vast_resolver "
                f"--seconds {args.seconds} --repeat {args.repeat}",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "httpx": httpx.__version__,
                    "aiohttp": aiohttp.__version__,
                },
                "goal_cpu_vs_aiohttp": GOAL,
                "resolver_worst_cpu_vs_aiohttp": worst,
                "cold_worst_cpu_vs_aiohttp": cold,
                "documents_worst_cpu_vs_aiohttp": floor,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {RESULTS} and {save_beside(RESULTS, 'bench.vast_resolver', panels(rows))}")


def main_hostile(seconds: float) -> None:
    rows = asyncio.run(run(seconds, 1, hostile=True))
    print(hostile_table(rows))
    HOSTILE_RESULTS.write_text(
        json.dumps(
            {
                "command": f"python -m bench.vast_resolver --hostile --seconds {seconds}",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "concurrency": HOSTILE_CONCURRENCY,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written: {HOSTILE_RESULTS}")


if __name__ == "__main__":
    main()
