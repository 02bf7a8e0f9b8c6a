"""Best-effort purge notification to the gateway after a publish.

A publish must never fail because the gateway is down, so errors are logged and
reported to the caller as ``gateway_notified: false`` instead of raised.
"""

from __future__ import annotations

import logging

import aiohttp

log = logging.getLogger("origin.notify")


async def notify_gateway(
    admin_url: str, token: str | None, tenant: str, timeout_seconds: float
) -> bool:
    """POST a soft bust for ``tenant`` to ``{admin_url}/admin/bust``; True on 2xx."""
    url = f"{admin_url.rstrip('/')}/admin/bust"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json={"tenant": tenant, "soft": True}, headers=headers) as resp,
        ):
            if 200 <= resp.status < 300:
                return True
            log.warning("gateway bust for %s answered %s", tenant, resp.status)
            return False
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("gateway bust for %s failed: %r", tenant, exc)
        return False
