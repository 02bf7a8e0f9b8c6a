"""Candidate (e2) of bench/layers.py: the hit on socketify (uWebSockets in C, called via cffi).

Not a candidate for the gateway: socketify runs its own libuv loop instead of asyncio's, so
aiohttp could no longer be the upstream client and the admin server in the same process, and
its only release on PyPI is a 2024 sdist carrying prebuilt libraries. It is here as a bound:
what one Python callback per request costs when the HTTP layer around it is all C. It runs
under its own interpreter (a throwaway venv, `--socketify-python` of bench/layers.py), since
it is no dependency of the project.
"""

from __future__ import annotations

import entries as e


def serve(port: int) -> None:
    """Serve the entries until killed; uWS adds Date and Content-Length itself."""
    from socketify import App

    table = e.make_entries()
    clock = e.Clock()
    app = App()

    def hit(res, req, head_only=False):  # type: ignore[no-untyped-def]
        entry = table.get(req.get_full_url())
        if entry is None:
            res.write_status(404).end(b"not stored\n")
            return
        age = clock.now() - e.STORED_AT
        for name, value in entry.fields[1:]:  # not Server: uWS writes its own
            res.write_header(name, value)
        res.write_header("Age", str(age))
        res.write_header("Cache-Status", f"edge; hit; ttl={e.MAX_AGE - age}")
        res.write_header("X-Cache", "HIT")
        if head_only:
            res.end_without_body()
        else:
            res.end(entry.body)

    def head(res, req):  # type: ignore[no-untyped-def]
        hit(res, req, head_only=True)

    app.get("/*", hit)
    # uWS sends the body of a HEAD answer if told to `end(body)` (checked with a raw socket:
    # the next response on the connection is then misread), so HEAD has its own handler.
    app.head("/*", head)
    app.listen({"port": port, "host": "127.0.0.1"}, lambda config: None)  # loopback only
    app.run()
