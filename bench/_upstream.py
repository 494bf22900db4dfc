"""The benchmark's VAST upstream: one InLine document at one URL, served by aiohttp.

Run by the harness in its own process, so that serving does not count as a contender's CPU:
`python -m bench._upstream --port PORT --file VAST.xml`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

VAST_PATH = "/vast"


def make_app(body: bytes) -> web.Application:
    async def vast(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/xml", charset="utf-8")

    app = web.Application()
    app.router.add_get(VAST_PATH, vast)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args()
    # No access log: at thousands of requests per second it would cost more than serving.
    web.run_app(
        make_app(args.file.read_bytes()),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
