"""`adstream vast resolve URL`: resolve one VAST tag, for people debugging a tag."""

from __future__ import annotations

import asyncio
import os
import sys

import click
import msgspec

from models.context import SessionContext
from streams.settings import Settings
from streams.vast import VastResult, VastTransport, VastUpstream


@click.group("vast")
def vast_group() -> None:
    """VAST tags."""


def _utf8(_context: click.Context, _param: click.Parameter, value: str) -> str:
    # Python hands argv bytes that are not UTF-8 on as lone surrogates, which no URL can hold.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise click.BadParameter(f"{os.fsencode(value)!r} is not UTF-8") from None
    return value


def _params(
    context: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    params = {}
    for value in values:
        key, sep, text = _utf8(context, param, value).partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        if key in params:  # refused, as a key given twice in an ad request is
            raise click.BadParameter(f"{key!r} is given twice")
        params[key] = text
    return params


@vast_group.command()
@click.argument("url", callback=_utf8)
@click.option(
    "--param",
    "params",
    multiple=True,
    callback=_params,
    metavar="KEY=VALUE",
    help="A macro value, also added to the tag's query string unless the tag has that key. "
    "Repeatable, once per KEY.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds for the whole chain.")
@click.option("--max-depth", default=5, show_default=True, help="Wrappers to follow at most.")
@click.option(
    "--fire-errors",
    is_flag=True,
    help="Report failures to the tag's <Error> pixels (off by default: a debugging session "
    "should not show up in an upstream's error reports).",
)
@click.option(
    "--block-private-addresses/--no-block-private-addresses",
    default=None,
    help="The SSRF guard: reach global addresses only (and --allowed-networks). "
    "[default: ADSTREAM_BLOCK_PRIVATE_ADDRESSES, else off]",
)
@click.option(
    "--allowed-networks",
    metavar="CIDR,...",
    help="Networks the SSRF guard lets through anyway. [default: ADSTREAM_ALLOWED_NETWORKS]",
)
def resolve(
    url: str,
    params: dict[str, str],
    as_json: bool,
    timeout: float,
    max_depth: int,
    fire_errors: bool,
    block_private_addresses: bool | None,
    allowed_networks: str | None,
) -> None:
    """Resolve the VAST tag at URL, following its wrappers, and show what would be served.

    Exits 0 when an ad resolved, 1 otherwise.
    """
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    overrides = {
        "block_private_addresses": block_private_addresses,
        "allowed_networks": allowed_networks,
    }
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        settings = msgspec.structs.replace(settings, **given)
    except ValueError as exc:  # from_env checked the environment's: the option's is wrong
        raise click.BadParameter(str(exc), param_hint="'--allowed-networks'") from None
    transport = VastTransport(
        block_private_addresses=settings.block_private_addresses,
        allowed_networks=settings.allowed_network_list,
    )
    upstream = VastUpstream(
        transport=transport,
        timeout=timeout,
        hop_timeout=timeout,
        max_depth=max_depth,
        fire_error_pixels=fire_errors,
    )
    result = asyncio.run(_resolve(upstream, url, params))
    if as_json:
        document = {
            "status": result.status,
            "error_code": result.error_code,
            "ads": result.ads,
            "impressions": result.impressions,
            "chain": result.chain,
            "errors": result.errors,
        }
        click.echo(msgspec.json.format(msgspec.json.encode(document)).decode())
    else:
        click.echo(_describe(result))
    sys.exit(0 if result.status == "inline" else 1)


async def _resolve(upstream: VastUpstream, url: str, params: dict[str, str]) -> VastResult:
    async with upstream.transport, upstream:
        return await upstream.fetch(url, context=SessionContext.create(), params=params)


def _describe(result: VastResult) -> str:
    code = "" if result.error_code is None else f" ({result.error_code})"
    lines = [f"status: {result.status}{code}"]
    for ad in result.ads:
        sequence = "" if ad.sequence is None else f" #{ad.sequence}"
        lines.append(
            f"ad {ad.id or '-'}{sequence}: {ad.ad_system or '-'} / {ad.ad_title or '-'}"
            f" (after {ad.wrappers} wrappers)"
        )
        for creative in ad.creatives:
            lines.append(f"  {creative.kind} {creative.id or '-'} {creative.duration or ''}")
            for media in creative.media_files:
                size = f"{media.width}x{media.height}" if media.width and media.height else ""
                lines.append(f"    {media.type or '?'} {size} {media.url}")
            lines.extend(f"    {t.event}: {t.url}" for t in creative.tracking)
    lines.append("impressions:")
    lines.extend(f"  {url}" for url in result.impressions)
    lines.append("chain:")
    for hop in result.chain:
        notes = "".join(
            [f" x{hop.attempts}" if hop.attempts > 1 else "", " (cached)" if hop.cached else ""]
        )
        lines.append(f"  {hop.status:3d} {hop.ms:8.1f} ms  {hop.url}{notes}")
    if result.errors:
        lines.append("errors:")
        for report in result.errors:
            lines.append(f"  {report.code} {report.message}")
            lines.extend(f"    -> {url}" for url in report.urls)
    return "\n".join(lines)
