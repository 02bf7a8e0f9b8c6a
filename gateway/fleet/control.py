"""Generations and the purge stream: what every instance must agree on, kept in Redis.

- Hard generations (per tenant and global `*`) are a hash of counters; soft busts are a list
  per tenant of `epoch at`, under one epoch counter, so epochs compare across instances. An
  instance loads them at start and whenever it reconnects, and only ever raises what it knows
  (a counter found lower than what an instance knew, after a failover or a flush, is raised
  back by that instance instead of bringing busted keys back).
- A bust is one script: bump, then append the event to the stream, atomically. A purge is
  appended to the stream before it is done and answered. If Redis cannot record it, the admin
  API says 503: an accepted purge is never lost.
- Every instance reads the stream on its own connection (XREAD BLOCK) from its last id and
  applies each event to its L1; after a disconnect it replays from that id. If the stream was
  trimmed past it (or lost), events may be missing: the instance flushes its L1 and says so.

All control keys share one hash slot (see `gateway.fleet.keys`); they carry no TTL, so a
`volatile-*` eviction policy never drops them (docs/caching.md says what to configure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ClusterError, ResponseError

from gateway.fleet.keys import Keys
from gateway.fleet.link import ERRORS, RedisLink, RedisUnavailable, cancelling
from gateway.generations import SOFT_BUSTS_KEPT, Generations

log = logging.getLogger("gateway.fleet")

READ_COUNT = 500  # stream events read per XREAD
RETRY_MAX = 1.0  # seconds between two attempts to reach Redis again, at most
# what the stream reader outlives: its own client's failures, and the data client's (`load`)
FOLLOW_ERRORS: tuple[type[BaseException], ...] = (*ERRORS, RedisUnavailable)

# KEYS: hard, epoch, soft tenants, the tenant's soft list, stream; ARGV: tenant, soft (0/1),
# at, stream length kept, instance id, busts kept. Returns {event id, generation or epoch}.
_BUST = """
local value
if ARGV[2] == '1' then
  value = redis.call('INCR', KEYS[2]) + 1
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('RPUSH', KEYS[4], value .. ' ' .. ARGV[3])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[6]), -1)
else
  value = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
local id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'op', 'bust',
  'tenant', ARGV[1], 'soft', ARGV[2], 'value', value, 'at', ARGV[3], 'from', ARGV[5])
return {id, value}
"""

# KEYS: hard, epoch; ARGV: the epoch counter's floor, then tenant, generation pairs. Raises
# counters found below what this instance knows (never lowers one).
_RAISE = """
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if epoch < tonumber(ARGV[1]) then redis.call('SET', KEYS[2], ARGV[1]) end
for i = 2, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') or 0
  if held < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""

Event = dict[str, str]


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    """`kind(value)`, or None for a value no version of the gateway wrote (logged)."""
    try:
        return kind(_text(value))
    except ValueError:
        log.error("unreadable value in redis ignored: %r", value)
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Control:
    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        generations: Generations,
        *,
        instance: str,
        apply: Callable[[Event], Awaitable[None]],
        flush: Callable[[str], Awaitable[None]],
    ) -> None:
        self.link = link
        self.keys = keys
        self.generations = generations
        self.instance = instance
        self.apply = apply  # a purge event taken by another instance, applied to this L1
        self.flush = flush  # events may be lost: drop this L1 (the reason is logged)
        self.last_id: str | None = None  # None: not loaded yet
        self.events = 0
        self.position = 0  # events the stream had taken up to last_id (its entries-added)
        self.flushes = 0
        self.lag = 0.0  # seconds between the latest event's record and its application here
        self._bust = link.data.register_script(_BUST)
        self._raise = link.data.register_script(_RAISE)

    @property
    def ready(self) -> bool:
        return self.last_id is not None

    # -- writing -------------------------------------------------------------------------

    async def bust(self, tenant: str, *, soft: bool, now: float) -> dict[str, object]:
        """Bump in Redis and record the event in one script, then apply it here."""
        k = self.keys
        keys = [k.hard, k.epoch, k.soft + "s", f"{k.soft}:{tenant}", k.stream]
        args = [tenant, int(soft), repr(now), self.link.cfg.stream_max, self.instance,
                SOFT_BUSTS_KEPT]
        _, value = await self.link.run(lambda r: self._bust(keys=keys, args=args, client=r))
        if soft:
            self.generations.add_soft(tenant, int(value), now)
        else:
            self.generations.raise_hard(tenant, int(value))
        return self.generations.describe(tenant) | {"busted": "soft" if soft else "hard"}

    async def record(self, event: Event) -> str:
        """Append a purge event to the stream (RedisUnavailable if it could not be)."""
        fields = {"op": "purge", "from": self.instance, **event}
        found = await self.link.run(
            lambda r: r.xadd(
                self.keys.stream, fields, maxlen=self.link.cfg.stream_max, approximate=True
            )
        )
        return _text(found)

    # -- loading -------------------------------------------------------------------------

    async def load(self) -> None:
        """Generations from Redis, raised where this instance knew higher ones; the stream
        position to follow from is read first, so no event between the two is missed."""
        k = self.keys
        tail = await self._tail()
        hard = await self.link.run(lambda r: r.hgetall(k.hard))
        tenants = await self.link.run(lambda r: r.smembers(k.soft + "s"))
        names = sorted(_text(t) for t in tenants)

        async def soft_busts(r: Any) -> list[list[Any]]:
            pipe = r.pipeline(transaction=False)
            for tenant in names:
                pipe.lrange(f"{k.soft}:{tenant}", 0, -1)
            found: list[list[Any]] = await pipe.execute()
            return found

        soft = dict(zip(names, await self.link.run(soft_busts) if names else [], strict=True))
        known = dict(self.generations.hard)
        held: dict[str, int] = {}
        for tenant, value in hard.items():
            number = _number(value, int)
            if number is not None:
                held[_text(tenant)] = number
                self.generations.raise_hard(_text(tenant), number)
        for tenant, busts in soft.items():
            for bust in busts:
                epoch, _, at = _text(bust).partition(" ")
                epoch_n, at_n = _number(epoch, int), _number(at, float)
                if epoch_n is not None and at_n is not None:
                    self.generations.add_soft(tenant, epoch_n, at_n)
        lower = [x for t, n in known.items() if n > held.get(t, 0) for x in (t, n)]
        if lower:
            log.warning("redis held lower hard generations than this instance: raised back")
        # The epoch counter too (a stamp is the counter + 1): soft busts after Redis lost its
        # data would otherwise carry epochs below the stamps entries already have.
        floor = [self.generations.epoch - 1, *lower]
        await self.link.run(lambda r: self._raise(keys=[k.hard, k.epoch], args=floor, client=r))
        if self.last_id is None:
            self.last_id, self.position = tail

    async def _stream_info(self, client: Any) -> dict[str, Any] | None:
        """XINFO STREAM, or None when there is no stream (none recorded yet, or Redis lost it)."""
        try:
            info: dict[str, Any] = await client.xinfo_stream(self.keys.stream)
        except ResponseError as exc:
            if isinstance(exc, ClusterError):  # CLUSTERDOWN is a ResponseError too: a failure
                raise
            return None
        return info

    async def _tail(self) -> tuple[str, int]:
        """The stream's last id and how many events it ever took (Redis 7's entries-added)."""
        info = await self.link.run(self._stream_info)
        if info is None:
            return "0-0", 0
        return _text(info["last-generated-id"]), int(info["entries-added"])

    # -- following -----------------------------------------------------------------------

    async def follow(self) -> None:
        """Read and apply the stream until cancelled; reconnect (backing off up to RETRY_MAX
        with jitter) and replay from the last id after any failure."""
        delay, reconnecting = 0.05, not self.ready
        while True:
            try:
                if reconnecting:
                    await self._catch_up()
                    reconnecting = False
                    delay = 0.05
                found = await self.link.blocking.xread(
                    {self.keys.stream: self.last_id},
                    count=READ_COUNT,
                    block=int(self.link.cfg.block * 1000),
                )
            except FOLLOW_ERRORS as exc:
                if cancelling():
                    raise
                if not reconnecting:
                    log.warning("purge stream unreachable (%s): will replay on reconnect", exc)
                reconnecting = True
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(RETRY_MAX, delay * 2)
                continue
            for _, entries in found or ():
                for event_id, fields in entries:
                    await self._apply(_text(event_id), {_text(a): _text(b) for a, b in
                                                         fields.items()})

    async def _catch_up(self) -> None:
        """After a start or a disconnect: generations again, and a flush if the stream lost
        events this instance had not read. Trimming drops the oldest events first, so the
        unread ones are all there while the stream is at least as long as their number."""
        if self.last_id is None:
            await self.load()
            return
        info = await self._stream_info(self.link.blocking)
        if info is None:
            lost = self.position > 0
        else:
            unread = int(info["entries-added"]) - self.position
            lost = unread < 0 or unread > int(info["length"])  # < 0: a new stream
        if lost:
            self.flushes += 1
            await self.flush(f"the purge stream no longer holds events after {self.last_id}")
            self.last_id = None
        await self.load()

    async def _apply(self, event_id: str, event: Event) -> None:
        self.events += 1
        self.position += 1
        self.last_id = event_id
        self.lag = max(0.0, time.time() - _id(event_id)[0] / 1000)  # since Redis recorded it
        try:
            if event.get("op") == "bust":
                tenant, value = event["tenant"], int(event["value"])
                soft = event.get("soft") == "1"
                if soft:
                    self.generations.add_soft(tenant, value, float(event["at"]))
                else:
                    self.generations.raise_hard(tenant, value)
                log.info("fleet: %s bust of tenant %s applied (generation %d)",
                         "soft" if soft else "hard", tenant, value)
            elif event.get("op") == "purge" and event.get("from") != self.instance:
                await self.apply(event)
                log.info("fleet: purge of tenant %s by %s from instance %s applied",
                         event.get("tenant"), event.get("kind"), event.get("from"))
        except (KeyError, ValueError, TypeError) as exc:  # one bad record stops nothing
            log.error("purge stream event %s not understood, skipped: %r (%s)",
                      event_id, event, exc)


def purge_event(
    tenant: str, kind: str, items: list[str] | str | None, soft_at: float | None
) -> Event:
    """The stream record of a purge (what `apply` receives back on every other instance)."""
    return {
        "tenant": tenant,
        "kind": kind,
        "items": json.dumps(items),
        "soft_at": "" if soft_at is None else repr(soft_at),
    }
