"""Loader bundle generation with a slow first build and an in-process prefill cache.

Codegen is intentionally expensive the first time a (project, version, platform) is
requested and deliberately NOT de-duplicated: concurrent cold requests each pay for it,
which is the stampede a caching gateway with request coalescing is meant to absorb.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from aiocache import SimpleMemoryCache

from origin.db import VersionInfo

MIN_BUNDLE_BYTES = 30_000
MAX_BUNDLE_BYTES = 60_000

_WORDS = (
    "header", "footer", "card", "grid", "list", "item", "button", "form", "input",
    "table", "chart", "modal", "banner", "avatar", "badge", "menu", "tabs", "panel",
    "toolbar", "sidebar", "search", "filter", "pager", "tooltip", "toast", "icon",
)


@dataclass(frozen=True)
class Bundle:
    """Generated JS plus its strong validator."""

    body: bytes
    etag: str


def _component(rng: random.Random, index: int) -> str:
    """One fake compiled component; varied enough not to compress to nothing."""
    name = "".join(w.capitalize() for w in rng.sample(_WORDS, 2)) + str(index)
    props = ", ".join(rng.sample(_WORDS, rng.randint(2, 5)))
    children = []
    for _ in range(rng.randint(4, 10)):
        tag = rng.choice(("div", "span", "section", "p", "ul", "li", "a", "img"))
        cls = f"{rng.choice(_WORDS)}-{rng.getrandbits(24):06x}"
        text = " ".join(rng.choices(_WORDS, k=rng.randint(2, 6)))
        key = rng.randint(0, 9999)
        children.append(f'      h("{tag}", {{ className: "{cls}", key: {key} }}, "{text}")')
    style = ", ".join(
        f'"{rng.choice(_WORDS)}-{i}": {{ margin: {rng.randint(0, 32)},'
        f' padding: {rng.randint(0, 32)}, color: "#{rng.getrandbits(24):06x}" }}'
        for i in range(rng.randint(2, 5))
    )
    return (
        f"  const {name}_styles = {{ {style} }};\n"
        f"  function {name}({{ {props} }}) {{\n"
        f"    const state = useState({rng.randint(0, 1000)});\n"
        f"    return h(\"div\", {{ className: \"{name.lower()}\", style: {name}_styles }}, [\n"
        + ",\n".join(children)
        + "\n    ]);\n  }\n"
        f"  registry[\"{name}\"] = {name};\n"
    )


def render_bundle(info: VersionInfo, platform: str) -> bytes:
    """Deterministic JS for (project, version, platform, source): same input, same bytes."""
    seed = hashlib.sha256(
        f"{info.project_id}|{info.n}|{platform}|{info.source}".encode()
    ).digest()
    rng = random.Random(seed)
    target = MIN_BUNDLE_BYTES + int.from_bytes(seed[:4], "big") % (
        MAX_BUNDLE_BYTES - MIN_BUNDLE_BYTES - 8_000
    )
    parts = [
        f"/*! loader bundle project={info.project_id} version={info.n} platform={platform}"
        f" published_at={info.published_at} */\n",
        f"(function (global) {{\n  \"use strict\";\n  const h = global.{platform}Runtime.h;\n"
        "  const useState = global.loaderRuntime.useState;\n  const registry = {};\n",
    ]
    size = sum(len(p) for p in parts)
    index = 0
    while size < target:
        chunk = _component(rng, index)
        parts.append(chunk)
        size += len(chunk)
        index += 1
    parts.append(
        f"  global.__loader = {{ project: \"{info.project_id}\", version: {info.n},"
        f" name: {json.dumps(info.project_name)}, components: registry }};\n}})(globalThis);\n"
    )
    return "".join(parts).encode()


def make_etag(info: VersionInfo, platform: str, body: bytes) -> str:
    """Strong, quoted validator over project, version and the exact bytes."""
    digest = hashlib.sha256()
    digest.update(f"{info.project_id}|{info.n}|{platform}|".encode())
    digest.update(body)
    return f'"{digest.hexdigest()[:32]}"'


class Codegen:
    """Builds bundles, paying ``seconds`` of simulated compile time per cold build."""

    def __init__(self, seconds: float, on_run: Callable[[], None]) -> None:
        self.seconds = seconds
        self._on_run = on_run
        self.prefill: SimpleMemoryCache = SimpleMemoryCache()

    async def bundle_for(self, info: VersionInfo, platform: str) -> Bundle:
        """Serve from the prefill cache, or compile (every cold caller compiles)."""
        key = f"bundle:{info.project_id}:{info.n}:{platform}"
        cached = await self.prefill.get(key)
        if isinstance(cached, Bundle):
            return cached
        self._on_run()
        await asyncio.sleep(self.seconds)
        body = await asyncio.to_thread(render_bundle, info, platform)
        bundle = Bundle(body=body, etag=make_etag(info, platform, body))
        await self.prefill.set(key, bundle)
        return bundle

    async def close(self) -> None:
        """Release the prefill cache."""
        await self.prefill.clear()
        await self.prefill.close()
