"""`python -m gateway purge|bust|stats|reload|entries|entry`: the operators' client of the
admin API.

Synchronous and standard-library only: an operator's one-shot command needs no event loop, and
it must work from a deploy pipeline with nothing but the admin URL and a token in the env.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

COMMANDS = ("purge", "bust", "stats", "reload", "entries", "entry")
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

    entries = sub.add_parser("entries", help="a tenant's cached entries, a page at a time")
    entries.add_argument("--tenant", required=True)
    entries.add_argument("--prefix", help="a path prefix or absolute URL prefix")
    entries.add_argument("--limit", type=int, help="entries per page (default 100, at most 1000)")
    entries.add_argument("--after", help="the cursor the previous page printed as `next`")

    entry = sub.add_parser("entry", help="every variant stored for one URL, with its headers")
    entry.add_argument("--tenant", required=True)
    entry.add_argument("url", help="a path (on each of the tenant's sites) or an absolute URL")
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
    if command == "entries":
        return entries_table(answer)
    if command == "entry":
        return entry_text(answer)
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
        lines += table(rows)
    return "\n".join(lines) or "(no counters yet)"


def table(rows: list[list[str]], *, text_last: bool = False) -> list[str]:
    """Rows as aligned columns, numbers to the right; with `text_last`, the last column (a
    URL, say) to the left and not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    if text_last:
        widths[-1] = 0
    return [
        "  ".join(
            cell.ljust(w) if text_last and i == len(row) - 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


ENTRY_COLUMNS = ("state", "status", "age", "ttl", "size", "tiers", "url")


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):g}"


def _entry_row(item: dict[str, Any]) -> list[str]:
    variant = f"  [{item['variant']}]" if item.get("variant") else ""
    return [
        str(item.get("state")), str(item.get("status")), _seconds(item.get("age")),
        _seconds(item.get("ttl")), str(item.get("size")), "+".join(item.get("tiers", [])),
        f"{item.get('url')}{variant}",
    ]


def _redis_line(answer: dict[str, Any]) -> list[str]:
    redis = answer.get("redis")
    return [] if redis in (None, "ok") else [f"redis: {redis} (memory of this instance only)"]


def entries_table(answer: dict[str, Any]) -> str:
    """One line per entry (a variant shows its Vary selection in brackets), then the cursor of
    the next page, and what went wrong with Redis if anything did."""
    items = answer.get("items") or []
    lines = [f"tenant {answer.get('tenant')}: {len(items)} entries"]
    if items:
        lines += table([list(ENTRY_COLUMNS), *(_entry_row(i) for i in items)], text_last=True)
    nxt = answer.get("next")
    if nxt:
        lines.append(f"next page: --after {shlex.quote(nxt)}")
    return "\n".join(lines + _redis_line(answer))


def _selected(fields: dict[str, str | None] | None) -> str:
    """The request fields a variant was chosen by (None: the key holds only their digest)."""
    if fields is None:
        return "(by a digest of the request fields)"
    shown = [f"{name}={'(absent)' if value is None else value}" for name, value in fields.items()]
    return ", ".join(shown) or "(does not vary)"


def entry_text(answer: dict[str, Any]) -> str:
    """Each variant: key, what selected it, state and times, generation, tags, headers."""
    gens = answer.get("generations") or {}
    variants = answer.get("variants") or []
    lines = [
        f"tenant {answer.get('tenant')}: {answer.get('url')}: {len(variants)} variant(s)",
        f"generations: {gens.get('hard')} hard bust(s), {gens.get('soft')} soft"
        f" (latest {gens.get('last_soft_bust') or '-'}), key part {gens.get('key')}",
    ]
    for v in variants:
        g = v.get("generation") or {}
        lines += [
            "",
            f"{v.get('url')}  [{'+'.join(v.get('tiers', []))}]",
            f"  key:       {v.get('key')}",
            f"  selected:  {_selected(v.get('request_headers'))}",
            f"  state:     {v.get('state')}, status {v.get('status')}, age"
            f" {_seconds(v.get('age'))} s, ttl {_seconds(v.get('ttl'))} s, stale-while-revalidate"
            f" {_seconds(v.get('stale_while_revalidate'))} s, stale-if-error"
            f" {_seconds(v.get('stale_if_error'))} s",
            f"  size:      {v.get('size')} bytes ({v.get('body_bytes')} of body)",
            f"  tags:      {', '.join(v.get('tags', [])) or '-'}",
            f"  generation: {g.get('key')} ({'current' if g.get('current') else 'old'}), soft"
            f" epoch {g.get('soft_epoch')}, soft purged {v.get('soft_purged_at') or '-'}, soft"
            f" busted {v.get('soft_busted_at') or '-'}",
            "  headers:",
            *(f"    {name}: {value}" for name, value in v.get("headers", [])),
        ]
    return "\n".join(lines + _redis_line(answer))


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
    if args.command in ("entries", "entry"):
        names = ("tenant", "prefix", "limit", "after") if args.command == "entries" else (
            "tenant", "url")
        query = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        return "GET", f"/admin/{args.command}?{urlencode(query)}", None
    return "GET", "/admin/stats", None
