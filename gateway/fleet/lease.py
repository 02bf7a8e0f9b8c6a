"""One origin fetch per cold key per fleet: a lease per key in Redis (memcache's leases,
Nishtala et al., NSDI 2013).

In-process single flight comes first (`gateway.coalesce`): only the leader of a key's flight
in this process claims the fleet lease. The claim is one script, `SET name token NX PX ttl GET`
and, when the lease was free, the key's entry as it is now (a holder may just have committed):

- set: this instance fills. It renews the lease while the fill runs (so a short TTL suffices
  for a 5 s origin), and commits the entry to Redis only while the lease is still its own
  (`RedisStore.put` with the lease: a compare-token-and-set script). It then publishes a
  notice: `stored`, `pass` (the answer may not be shared: the lease becomes a `pass` marker
  for `pass_ttl`, so every instance goes to the origin in parallel at once, not one after the
  other), or `released` (the fill failed: one waiter takes over).
- held by a token: another instance fills. Wait for its notice (`gateway.fleet.notices`), or
  a capped, jittered re-check of Redis, at most half of `collapse_timeout`; then use the entry it
  stored, or take the lease if it was released or expired (its holder died), or give up and
  fetch without one.
- held by `pass`: fetch without a lease.

Any Redis failure means fetching without a lease: the fleet then costs at most one origin
fetch per instance, as before it existed.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.fleet import codec
from gateway.fleet.keys import Keys, entry_field
from gateway.fleet.link import RedisLink, RedisUnavailable, cancelling
from gateway.fleet.notices import Notices
from gateway.key import vary_record_key
from gateway.lookup import Lookup
from gateway.settings import CacheSettings
from gateway.store import Entry
from gateway.store.tiered import TieredStore

PASS = b"pass"
RECHECK_FIRST = 0.05  # seconds before a waiter first re-checks Redis without a notice
RECHECK_MAX = 1.0  # the cap of its doubling interval

# KEYS: lease, the URL's entries hash; ARGV: token, ms, entry field. SET NX PX GET, and the
# entry as it is now when the lease was free (a holder may just have committed it).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return {held, false} end
local entry = redis.call('HGET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {false, entry}
"""

# KEYS: lease; ARGV: token, ms. Extend the lease if it is still this holder's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lease; ARGV: token, replacement ("" to delete), ms. Give the lease up if still held.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


@dataclass(slots=True)
class Landed:
    """Another instance filled the key while this one waited: its entry, from Redis."""

    entry: Entry


class Lease:
    """A fill lease this instance holds: renewed until it ends, then committed or released."""

    def __init__(self, leases: Leases, name: str, token: str) -> None:
        self.leases = leases
        self.name = name
        self.token = token
        self.ended = False
        self._renewal = asyncio.get_running_loop().create_task(self._renew())

    async def keep(self, entry: Entry) -> bool:
        """Store the fill's entry in both tiers, in Redis only while the lease is ours. If
        Redis did not take it, the lease is released at once: waiters must not wait for an
        entry that will not come, nor new claimants for the lease to lapse."""
        self._stop()
        store = self.leases.store
        kept = await store.l1.put(entry)
        try:
            shared = await store.l2.put(entry, (self.name, self.token))
        except RedisUnavailable:
            shared = False
        except BaseException:  # cancelled mid-write: let the lease go rather than lapse
            self.leases.spawn(self._release(b""))
            raise
        if shared:
            await self.leases.notices.publish(self.name, "stored")
        else:
            await self._release(b"")
        return kept or shared

    def give_up(self, *, shareable: bool) -> None:
        """The fill will store nothing: `shareable` False marks the key `pass` for the whole
        fleet for `pass_ttl`; True just releases it (one waiter takes over)."""
        if self.ended:
            return
        self._stop()
        self.leases.spawn(self._release(b"" if shareable else PASS))

    def _stop(self) -> None:
        self.ended = True
        self._renewal.cancel()

    async def _renew(self) -> None:
        link, ttl = self.leases.link, self.leases.ttl_ms
        while True:
            await asyncio.sleep(ttl / 3000)
            # Failing, the lease may lapse: then another instance fills too, nothing worse.
            try:
                await link.run(
                    lambda r: self.leases.renew_script(keys=[self.name], args=[self.token, ttl],
                                                       client=r)
                )
            except RedisUnavailable:
                if cancelling():
                    raise

    async def _release(self, replacement: bytes) -> None:
        leases = self.leases
        ms = int(leases.settings.pass_ttl * 1000) or 1
        args = [self.token, replacement, ms]
        try:
            await leases.link.run(
                lambda r: leases.release_script(keys=[self.name], args=args, client=r)
            )
        except RedisUnavailable:
            return  # it expires by itself
        await leases.notices.publish(self.name, "pass" if replacement else "released")


Claim = Lease | Landed | None  # None: fetch without a lease


class Leases:
    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        notices: Notices,
        store: TieredStore,
        settings: CacheSettings,
        *,
        ttl: float,
        loop_time: Callable[[], float] | None = None,
    ) -> None:
        self.link = link
        self.keys = keys
        self.notices = notices
        self.store = store
        self.settings = settings
        self.ttl_ms = int(ttl * 1000)
        self.loop_time = loop_time
        self.claim_script = link.data.register_script(_CLAIM)
        self.renew_script = link.data.register_script(_RENEW)
        self.release_script = link.data.register_script(_RELEASE)
        self.waited = 0  # claims that waited on another instance
        self.landed = 0  # ... and were answered by its entry
        self.timeouts = 0  # ... and gave up after collapse_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a release in the background, kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def claim(self, look: Lookup, newer_than: float | None) -> Claim:
        """The lease for the key, the entry another instance stored (newer than
        `newer_than`, the stale entry's response time, when revalidating), or None."""
        if not self.link.available or not self.store.ready():
            return None
        name = self.keys.lease(vary_record_key(look.tenant, look.url), look.key)
        token = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        now = self.loop_time or loop.time
        # Half the collapse timeout: this process's own joiners wait the whole of it for this
        # fill, and must still get its answer rather than each go to the origin on its own.
        deadline = now() + self.settings.collapse_timeout / 2
        delay, waited = RECHECK_FIRST, False
        keys = [name, self.keys.entries(vary_record_key(look.tenant, look.url))]
        args = [token, self.ttl_ms, entry_field(look.key)]
        while True:
            try:
                held, raw = await self.link.run(
                    lambda r: self.claim_script(keys=keys, args=args, client=r)
                )
            except RedisUnavailable:
                return None
            if held == PASS:
                return None
            if held is None:
                # Leased; but a holder may have committed and let go just before: its entry
                # came back with the lease.
                lease = Lease(self, name, token)
                landed = self._landed(look, raw, newer_than)
                if landed is None:
                    return lease
                lease.give_up(shareable=True)
                await self.store.l1.put(landed.entry)
                return landed
            if not waited:
                waited = True
                self.waited += 1
            outcome = await self._notice(name, min(delay * random.uniform(0.5, 1.5),
                                                   max(0.0, deadline - now())))
            if outcome == "pass":
                return None
            try:
                raw = await self.link.run(lambda r: r.hget(keys[1], args[2]))
            except RedisUnavailable:
                return None
            landed = self._landed(look, raw, newer_than)
            if landed is not None:
                await self.store.l1.put(landed.entry)
                return landed
            if outcome == "stored" or now() >= deadline:
                # Stored under another key (the answer varies on a field this request
                # differs on), or too long: fetch alone.
                self.timeouts += outcome != "stored"
                return None
            delay = min(RECHECK_MAX, delay * 2)

    async def stop(self) -> None:
        """Releases still running end with the instance (their leases lapse by themselves)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _landed(self, look: Lookup, raw: bytes | None, newer_than: float | None) -> Landed | None:
        """The key's entry as read from Redis, if another instance stored it (newer than the
        stale entry being revalidated)."""
        entry = None if raw is None else codec.decode(raw)
        if entry is None or entry.key != look.key or not self.store.current(entry):
            return None  # absent, or what made this request miss: expired, soft-busted
        if newer_than is not None and entry.response_time <= newer_than:
            return None
        self.landed += 1
        return Landed(entry)

    async def _notice(self, name: str, within: float) -> str | None:
        future = self.notices.wait(name)
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            return None
        finally:
            self.notices.forget(name, future)

    def stats(self) -> dict[str, int]:
        return {"waited": self.waited, "landed": self.landed, "timeouts": self.timeouts}
