"""`python -m gateway purge|bust|stats|reload`: the operators' client of the admin API.

Synchronous and standard-library only: an operator's one-shot command needs no event loop, and
it must work from a deploy pipeline with nothing but the admin URL and a token in the env.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

COMMANDS = ("purge", "bust", "stats", "reload")
DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"


class AdminCallFailed(Exception):
    """The admin API refused or could not be reached; the message is for the operator."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Operate a running gateway through its admin API."
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("GATEWAY_ADMIN_URL", DEFAULT_ADMIN_URL),
        help=f"admin listener (env GATEWAY_ADMIN_URL, default {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_ADMIN_TOKEN"),
        help="bearer token (env GATEWAY_ADMIN_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    sub = parser.add_subparsers(dest="command", required=True)

    purge = sub.add_parser("purge", help="purge a tenant's URLs, prefix, tags or namespace")
    purge.add_argument("--tenant", required=True)
    what = purge.add_mutually_exclusive_group()
    what.add_argument("--url", dest="urls", action="append", help="a path or URL (repeatable)")
    what.add_argument("--prefix", help="a path prefix or absolute URL prefix")
    what.add_argument("--tag", dest="tags", action="append", help="a surrogate key (repeatable)")
    purge.add_argument("--soft", action="store_true", help="mark stale instead of removing")

    bust = sub.add_parser("bust", help="bump a tenant's generation ('*' for every tenant)")
    bust.add_argument("--tenant", required=True)
    bust.add_argument("--soft", action="store_true", help="serve stale while refreshing")

    sub.add_parser("stats", help="cache, origin and per-tenant counters")
    sub.add_parser("reload", help="re-read the routing file; errors keep the running config")
    return parser.parse_args(argv)


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
         ) -> dict[str, Any]:
    """One admin request; its JSON answer, or AdminCallFailed with the server's reason."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(args.admin_url.rstrip("/") + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as resp:
            answer: dict[str, Any] = json.loads(resp.read() or b"{}")
            return answer
    except urllib.error.HTTPError as exc:
        raise AdminCallFailed(_refusal(exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminCallFailed(f"cannot reach {args.admin_url}: {reason}") from None


def _refusal(status: int, raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return f"HTTP {status}"
    lines = [f"HTTP {status}: {payload.get('error', payload)}"]
    for issue in payload.get("issues", []):
        lines.append(f"  {issue['file']}:{issue['line']}: {issue['field']}: {issue['message']}")
    return "\n".join(lines)


def describe(command: str, answer: dict[str, Any]) -> str:
    """A readable line (or table) for each command's answer."""
    if command == "purge":
        how = "marked stale" if answer.get("soft") else "removed"
        return f"tenant {answer.get('tenant')}: {answer.get('purged')} entries {how}"
    if command == "bust":
        last = answer.get("last_soft_bust")
        return (
            f"tenant {answer.get('tenant')}: {answer.get('busted')} bust done; hard busts so far:"
            f" {answer.get('hard')}, soft busts: {answer.get('soft')}"
            + (f" (latest at {last})" if last else "")
        )
    if command == "reload":
        return f"reloaded {answer.get('source')}: {answer.get('routes')} routes"
    return stats_table(answer)


TENANT_COLUMNS = (
    "entries", "bytes", "hit", "miss", "stale_while_revalidate", "stale_if_error",
    "origin_fetches", "evictions",
)


def stats_table(stats: dict[str, Any]) -> str:
    lines: list[str] = []
    for section in ("cache", "store"):
        values = stats.get(section) or {}
        if values:
            lines.append(f"{section}: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
    for name, origin in (stats.get("origins") or {}).items():
        lines.append(f"origin {name}: " + ", ".join(f"{k}={v}" for k, v in origin.items()))
    tenants = stats.get("tenants") or {}
    if tenants:
        header = ["tenant", *TENANT_COLUMNS]
        rows = [header] + [
            [name, *(str(counters.get(c, 0)) for c in TENANT_COLUMNS)]
            for name, counters in sorted(tenants.items())
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                  for row in rows]
    return "\n".join(lines) or "(no counters yet)"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.token:
        print("no token: pass --token or set GATEWAY_ADMIN_TOKEN", file=sys.stderr)
        return 2
    method, path, body = request_for(args)
    try:
        answer = call(args, method, path, body)
    except AdminCallFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else describe(args.command, answer))
    return 0


def request_for(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """Method, path and JSON body of the admin call a command makes."""
    if args.command == "purge":
        body: dict[str, Any] = {"tenant": args.tenant, "soft": args.soft}
        for name in ("urls", "prefix", "tags"):
            if getattr(args, name) is not None:
                body[name] = getattr(args, name)
        return "POST", "/admin/purge", body
    if args.command == "bust":
        return "POST", "/admin/bust", {"tenant": args.tenant, "soft": args.soft}
    if args.command == "reload":
        return "POST", "/admin/reload", {}
    return "GET", "/admin/stats", None
