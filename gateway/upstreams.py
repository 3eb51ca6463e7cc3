"""Where each deployment is called: its address as errors and the log name it, and a start-up
check that each configured address answers (logged, never blocking the start)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from policies import Deployment

log = logging.getLogger("rightsize.upstreams")

# Long enough for a TLS-less TCP handshake across a continent, short enough that a log reader
# sees the warning within seconds of the start.
REACHABILITY_TIMEOUT_S = 3.0


def endpoint_of(deployment: Deployment) -> str:
    """The deployment's api_base without credentials or query (safe for a client and the log),
    or what litellm calls when none is configured."""
    if not deployment.api_base:
        provider = deployment.model.partition("/")[0] if "/" in deployment.model else "provider"
        return f"{provider}'s default api_base (litellm)"
    parts = urlsplit(deployment.api_base)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal, bracketed again as in the URL
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else deployment.api_base


async def check_reachability(
    deployments: Iterable[Deployment], timeout_s: float = REACHABILITY_TIMEOUT_S
) -> list[str]:
    """Open (and close) a TCP connection to each configured api_base's host, all at once; log a
    warning naming the deployments behind each one that does not answer within `timeout_s`.
    Returns the warnings. Only the connection is tried: no request, so no key is sent."""
    by_address: dict[tuple[str, int], list[Deployment]] = {}
    for deployment in deployments:
        address = _address(deployment)
        if address is not None:
            by_address.setdefault(address, []).append(deployment)
    results = await asyncio.gather(*(_connect(host, port, timeout_s) for host, port in by_address))
    warnings = []
    for (host, port), problem in zip(by_address, results, strict=True):
        if problem is None:
            continue
        served = by_address[(host, port)]
        names = ", ".join(repr(d.name) for d in served)
        warning = (
            f"upstream {endpoint_of(served[0])} (deployments {names}) is not reachable: "
            f"{host}:{port}: {problem}; requests to it will fail (502) until it is"
        )
        log.warning(warning)
        warnings.append(warning)
    return warnings


def _address(deployment: Deployment) -> tuple[str, int] | None:
    """The host and port a call to the deployment connects to: its proxy's, when one applies."""
    if not deployment.api_base:
        return None  # litellm's provider default: not ours to probe
    url = URL(deployment.api_base)
    try:
        proxy, _ = get_env_proxy_for_url(url)
    except LookupError:
        proxy = None
    target = proxy or url
    if not target.host:
        return None
    return target.host, target.port or (443 if target.scheme == "https" else 80)


async def _connect(host: str, port: int, timeout_s: float) -> str | None:
    """None when a TCP connection opens within the time; else why not."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no connection within {timeout_s:g}s"
    except (OSError, ValueError) as exc:  # ValueError: a host name that cannot be encoded
        return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None
