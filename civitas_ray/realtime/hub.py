"""The per-process WebSocket hub: one Redis reader per tenant, fanned out to its clients.

Guarantees, per connection:
- A client only ever receives events of its own tenant's stream (one feed per tenant,
  chosen by the authenticated principal) on channels it subscribed to and whose
  permission its role holds (checked again for every event).
- Per subscription, events arrive in stream order, each at most once. A subscription
  remembers `since`: everything after it is delivered live, reported dropped, or
  re-sent by a replay; the live path never delivers an id at or below it, which is
  what makes the seam between a replay and live delivery exact.
- A slow client never slows the reader or other clients: the reader only offers events
  to each client's bounded `Outbox` and wakes its sender. A client whose socket has not
  taken a frame for `slow_close_after_s` while its events are being dropped, or whose
  state slots overflow, is closed with 4008.
- The reader survives Redis restarts: it backs off, retries from the last id it
  dispatched (no gap), and tells clients while it is down.

The reader starts at the stream's tail, resolved to a concrete id (what `$` means, but
repeatable, so no entry slips between two XREADs). It never rewinds for a resuming
client: that client catches up with its own XRANGE replay up to the reader's position,
so one reader per tenant serves clients at any resume point.

Each client has one sender task, the only writer to its socket. It sends control
messages first, then runs replays (XRANGE pages, at the client's own pace), then
drains the outbox, joining whatever is ready into one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from civitas_ray.auth.permissions import Perm
from civitas_ray.cache import get_redis
from civitas_ray.config import RealtimeSettings, get_settings
from civitas_ray.realtime.channels import Channel
from civitas_ray.realtime.events import (
    ZERO_ID,
    RawEntry,
    StreamId,
    format_id,
    parse_id,
    read_range,
    stream_key,
    tail_id,
)
from civitas_ray.realtime.outbox import Outbox
from civitas_ray.realtime.protocol import CloseCode, dumps
from civitas_ray.realtime.wire import WireEvent, frame, from_entry

logger = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]
RedisFactory = Callable[[], aioredis.Redis]
REDIS_ERRORS = (RedisError, OSError)
# Replies (pongs, acks, errors) and replays queued for a client that is not reading
# them: past this, the client is flooding us without listening.
MAX_PENDING_JOBS = 1_000


@dataclass(slots=True)
class Subscription:
    key: str  # canonical channel name or pattern (`zone:*`)
    channel: Channel
    since: StreamId  # the live path delivers only ids above this (never lowered)
    covered: StreamId  # every event after this was delivered, queued or dropped (gaps)


@dataclass(frozen=True, slots=True)
class ReplayRange:
    after: StreamId  # exclusive
    until: StreamId  # inclusive
    keys: frozenset[str]
    droppable_only: bool  # a gap fill: coalesced state was never dropped


@dataclass(slots=True)
class ReplayJob:
    ranges: list[ReplayRange]
    resume_from: StreamId | None
    channels: list[str]
    ref: str | int | None = None


@dataclass(slots=True)
class ClientStats:
    frames: int = 0
    messages: int = 0
    replayed: int = 0


class Client:
    """One WebSocket connection as the hub sees it: who, what it wants, what it is owed."""

    def __init__(self, *, hub: Hub, tenant_id: uuid.UUID, user_id: uuid.UUID,
                 permissions: frozenset[Perm], send_text: SendText) -> None:
        s = hub.settings
        self.hub = hub
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.permissions = permissions
        self.subs: dict[str, Subscription] = {}
        self.outbox = Outbox(capacity=s.client_queue, state_slots=s.client_state_slots,
                             max_gaps=s.client_gaps)
        self.jobs: deque[str | ReplayJob] = deque()
        self.wake = asyncio.Event()
        self.closing: asyncio.Future[tuple[int, str]] = \
            asyncio.get_running_loop().create_future()
        self.feed: TenantFeed | None = None
        self.stats = ClientStats()
        self.sending_since: float | None = None  # monotonic start of the send in progress
        self._send_text = send_text

    # -- called by the connection (its receive task) --------------------------------

    def control(self, message: dict[str, Any]) -> None:
        """Queue a control message (ack, pong, notice, error); sent before any event."""
        if len(self.jobs) >= MAX_PENDING_JOBS:
            self.request_close(CloseCode.TOO_SLOW, "too slow: replies are not being read")
            return
        self.jobs.append(dumps(message))
        self.wake.set()

    def request_close(self, code: int, reason: str) -> None:
        if not self.closing.done():
            self.closing.set_result((code, reason))

    @property
    def position(self) -> StreamId:
        assert self.feed is not None, "attach the client first"
        return self.feed.position_sid

    def subscribe(self, channels: list[Channel], last: StreamId | None, *,
                  ref: str | int | None = None) -> list[str]:
        """Add subscriptions (and schedule what `last` asks to re-send); return the new keys.

        Runs without awaiting, so the feed position read here is exactly the seam: every
        event after it reaches the new subscriptions live, every event up to it (and
        after `last`) comes from the replay.
        """
        position = self.position
        fresh: list[str] = []
        ranges: list[ReplayRange] = []
        for ch in channels:
            sub = self.subs.get(ch.name)
            if sub is None:
                since = position if last is None else max(last, position)
                self.subs[ch.name] = Subscription(key=ch.name, channel=ch, since=since,
                                                  covered=since if last is None else last)
                fresh.append(ch.name)
            elif last is not None:
                if last < sub.covered:
                    ranges.append(ReplayRange(last, sub.covered, frozenset({ch.name}), False))
                    sub.covered = last
                ranges.extend(ReplayRange(a, b, frozenset({ch.name}), True)
                              for a, b in self.outbox.gap_ranges(ch.name, last))
        if last is not None and last < position and fresh:
            ranges.insert(0, ReplayRange(last, position, frozenset(fresh), False))
        ack: dict[str, Any] = {"type": "subscribed", "channels": [c.name for c in channels],
                               "subscriptions": sorted(self.subs),
                               "live_after": format_id(position)}
        if ref is not None:
            ack["ref"] = ref
        self.control(ack)
        if ranges:
            self.jobs.append(ReplayJob(ranges=ranges, resume_from=last, ref=ref,
                                       channels=[c.name for c in channels]))
        return fresh

    def unsubscribe(self, keys: Iterable[str], *, ref: str | int | None = None) -> list[str]:
        removed = [k for k in dict.fromkeys(keys) if self.subs.pop(k, None) is not None]
        self.outbox.discard(removed)
        ack: dict[str, Any] = {"type": "unsubscribed", "channels": removed,
                               "subscriptions": sorted(self.subs)}
        if ref is not None:
            ack["ref"] = ref
        self.control(ack)
        return removed

    def set_permissions(self, permissions: frozenset[Perm]) -> list[str]:
        """After a re-authentication: drop subscriptions the role may no longer read."""
        self.permissions = permissions
        lost = [k for k, sub in self.subs.items() if sub.channel.permission not in permissions]
        if lost:
            for k in lost:
                del self.subs[k]
            self.outbox.discard(lost)
            self.control({"type": "unsubscribed", "channels": lost,
                          "subscriptions": sorted(self.subs), "reason": "forbidden"})
        return lost

    # -- called by the tenant's reader ----------------------------------------------

    def deliver(self, events: list[WireEvent], now: float) -> None:
        """Offer a batch of live events; never awaits, never blocks on this client."""
        if self.closing.done():
            return
        offered = False
        subs, perms = self.subs, self.permissions
        for ev in events:
            sub = subs.get(ev.channel.name)
            if sub is None and ev.channel.pattern is not None:
                sub = subs.get(ev.channel.pattern)
            if sub is None or ev.sid <= sub.since or ev.channel.permission not in perms:
                continue
            self.outbox.offer(ev, sub.key)
            offered = True
        if not offered:
            return
        # Hopeless: events are being dropped while the socket has not taken one frame for
        # slow_close_after_s (a client reading slowly still gets dropped notices).
        stuck = self.sending_since is not None \
            and now - self.sending_since > self.hub.settings.slow_close_after_s
        if self.outbox.overflowed:
            self.request_close(CloseCode.TOO_SLOW, "too slow: too many state channels queued")
        elif self.outbox.dropping is not None and stuck:
            self.request_close(CloseCode.TOO_SLOW,
                               "too slow: the socket stopped taking events; reconnect with "
                               "last_event_id")
        self.wake.set()

    # -- the sender task ------------------------------------------------------------

    async def run_sender(self) -> None:
        """Write to the socket until cancelled; the only task that sends on it."""
        s = self.hub.settings
        while True:
            if self.jobs:
                job = self.jobs[0]
                if isinstance(job, ReplayJob):
                    await self._replay(job)
                    self.jobs.popleft()
                    continue
                batch: list[str] = []
                while self.jobs and isinstance(self.jobs[0], str) \
                        and len(batch) < s.frame_max_events:
                    batch.append(self.jobs.popleft())  # type: ignore[arg-type]
                await self._send(batch)
                continue
            items = self.outbox.take(s.frame_max_events, s.frame_max_bytes)
            if items:
                await self._send(items)
                continue
            self.wake.clear()
            await self.wake.wait()

    async def _send(self, messages: list[str]) -> None:
        self.sending_since = time.monotonic()
        await self._send_text(frame(messages))
        self.sending_since = None
        self.stats.frames += 1
        self.stats.messages += len(messages)

    async def _replay(self, job: ReplayJob) -> None:
        """Re-send stored events at the client's pace (backpressure, not buffering)."""
        s = self.hub.settings
        key = stream_key(self.tenant_id)
        if job.resume_from is not None:
            await self._check_truncated(key, job.resume_from)
        sent = 0
        for rng in job.ranges:
            cursor, until = format_id(rng.after), format_id(rng.until)
            while True:
                entries = await self._read_page(key, cursor, until, s.replay_page)
                if not entries:
                    break
                cursor = entries[-1][0]
                messages = self._select(entries, rng)
                for i in range(0, len(messages), s.frame_max_events):
                    await self._send(messages[i:i + s.frame_max_events])
                sent += len(messages)
                if len(entries) < s.replay_page:
                    break
        self.stats.replayed += sent
        notice: dict[str, Any] = {"type": "notice", "code": "replayed", "count": sent,
                                  "channels": job.channels}
        if job.ref is not None:
            notice["ref"] = job.ref
        await self._send([dumps(notice)])

    def _select(self, entries: list[RawEntry], rng: ReplayRange) -> list[str]:
        """The entries of a replay page this client may and wants to see; state events
        coalesced to the newest per key within the page."""
        if rng.keys.isdisjoint(self.subs):
            return []  # unsubscribed while the replay was pending
        picked: list[WireEvent] = []
        for eid, fields in entries:
            try:
                ev = from_entry(eid, fields)
            except ValueError:
                continue
            ch = ev.channel
            if (ch.name not in rng.keys and ch.pattern not in rng.keys) \
                    or ch.permission not in self.permissions:
                continue
            if rng.droppable_only and ev.coalesce is not None:
                continue
            picked.append(ev)
        seen: set[str] = set()
        newest_first: list[str] = []
        for ev in reversed(picked):
            if ev.coalesce is not None:
                if ev.coalesce in seen:
                    continue
                seen.add(ev.coalesce)
            newest_first.append(ev.message)
        newest_first.reverse()
        return newest_first

    async def _read_page(self, key: str, after: str, until: str, count: int) -> list[RawEntry]:
        delay = self.hub.settings.reconnect_backoff_s
        while True:
            try:
                return await read_range(self.hub.redis(), key, after, until, count=count)
            except REDIS_ERRORS as exc:
                logger.warning("replay read failed; retrying",
                               extra={"tenant_id": str(self.tenant_id), "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.hub.settings.reconnect_backoff_max_s)

    async def _check_truncated(self, key: str, resume_from: StreamId) -> None:
        """Tell the client when trimming (retention, length cap) removed events it asks for."""
        try:
            info = await self.hub.redis().xinfo_stream(key)
        except ResponseError:
            info = None  # no such stream: whatever followed resume_from is gone
        except REDIS_ERRORS:
            return  # the reader reports the outage; the replay itself retries
        first: str | None = None
        if info is None:
            truncated = resume_from != (0, 0)
        else:
            # Trimming removes the oldest entries (and, before Redis 7.2, does not move
            # max-deleted-entry-id), so: were entries removed, and were any after
            # resume_from? The first retained entry bounds them.
            first = (info.get("first-entry") or (None,))[0]
            removed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)
            bound = parse_id(first) if first else parse_id(
                str(info.get("last-generated-id") or ZERO_ID))
            deleted = parse_id(str(info.get("max-deleted-entry-id") or ZERO_ID))
            # A client's last_event_id names an entry it received. If that entry is older
            # than anything left, something removed it: trimming, or a Redis restart that
            # lost the stream (the new stream shows nothing removed, but starts later).
            lost = removed or resume_from != (0, 0)
            truncated = deleted > resume_from or (lost and resume_from < bound)
        if truncated:
            await self._send([dumps({"type": "notice", "code": "truncated",
                                     "last_event_id": format_id(resume_from),
                                     "first_id": first})])


class TenantFeed:
    """The one reader of a tenant's stream in this process, and the clients it feeds."""

    def __init__(self, hub: Hub, tenant_id: uuid.UUID) -> None:
        self.hub = hub
        self.tenant_id = tenant_id
        self.key = stream_key(tenant_id)
        self.clients: set[Client] = set()
        self.position = ZERO_ID
        self.position_sid: StreamId = (0, 0)
        self.down = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        # Nobody may be left to await a failed start: mark its exception retrieved.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.task = loop.create_task(self._run(), name=f"realtime-feed-{tenant_id}")

    def stop(self) -> None:
        self.task.cancel()
        if not self.ready.done():
            self.ready.cancel()

    def broadcast(self, message: dict[str, Any]) -> None:
        for client in tuple(self.clients):
            client.control(message)

    def _advance(self, entry_id: str) -> None:
        self.position = entry_id
        self.position_sid = parse_id(entry_id)

    async def _run(self) -> None:
        s = self.hub.settings
        try:
            self._advance(await tail_id(self.hub.redis(), self.key))
        except REDIS_ERRORS as exc:
            logger.warning("event stream unavailable; refusing new connections",
                           extra={"tenant_id": str(self.tenant_id), "error": repr(exc)})
            self.hub.forget(self)
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        logger.info("tenant feed started",
                    extra={"tenant_id": str(self.tenant_id), "position": self.position})
        delay = s.reconnect_backoff_s
        while True:
            try:
                reply = await self.hub.redis().xread({self.key: self.position},
                                                     count=s.read_count, block=s.read_block_ms)
            except REDIS_ERRORS as exc:
                if not self.down:
                    self.down = True
                    logger.warning("event stream lost; reconnecting",
                                   extra={"tenant_id": str(self.tenant_id),
                                          "position": self.position, "error": repr(exc)})
                    self.broadcast({"type": "notice", "code": "redis_unavailable",
                                    "detail": "live events are paused; nothing will be lost",
                                    "last_event_id": self.position})
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, s.reconnect_backoff_max_s)
                continue
            except Exception:
                # Background loops log and keep going; they never die silently.
                logger.exception("tenant feed read failed",
                                 extra={"tenant_id": str(self.tenant_id)})
                await asyncio.sleep(s.reconnect_backoff_max_s)
                continue
            if self.down:
                self.down = False
                delay = s.reconnect_backoff_s
                logger.info("event stream back", extra={"tenant_id": str(self.tenant_id),
                                                        "position": self.position})
                self.broadcast({"type": "notice", "code": "redis_restored",
                                "last_event_id": self.position})
            entries = _xread_entries(reply)
            if entries:
                self._dispatch(entries)

    def _dispatch(self, entries: list[RawEntry]) -> None:
        events: list[WireEvent] = []
        for eid, fields in entries:
            try:
                events.append(from_entry(eid, fields))
            except ValueError as exc:
                logger.warning("skipping a malformed stream entry",
                               extra={"stream": self.key, "entry_id": eid, "error": str(exc)})
        self._advance(entries[-1][0])
        if events:
            now = time.monotonic()
            for client in tuple(self.clients):
                client.deliver(events, now)


def _xread_entries(reply: Any) -> list[RawEntry]:
    """The entries of a one-stream XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    out: list[RawEntry] = []
    for entries in streams:
        if entries and isinstance(entries[0], list):  # RESP3 wraps the entry list
            entries = entries[0]
        for eid, fields in entries:
            out.append((eid.decode() if isinstance(eid, bytes) else eid, fields))
    return out


@dataclass
class Hub:
    """All tenant feeds of this process."""

    settings: RealtimeSettings
    redis: RedisFactory = get_redis
    feeds: dict[uuid.UUID, TenantFeed] = field(default_factory=dict)

    async def attach(self, client: Client) -> None:
        """Join the client to its tenant's feed, starting the reader if it is the first.

        Raises a Redis error when the stream cannot be reached for a new feed.
        """
        feed = self.feeds.get(client.tenant_id)
        if feed is None:
            feed = self.feeds[client.tenant_id] = TenantFeed(self, client.tenant_id)
        assert feed.tenant_id == client.tenant_id
        feed.clients.add(client)
        client.feed = feed
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            self.detach(client)
            raise
        if feed.down:
            client.control({"type": "notice", "code": "redis_unavailable",
                            "detail": "live events are paused; nothing will be lost",
                            "last_event_id": feed.position})

    def detach(self, client: Client) -> None:
        feed = client.feed
        if feed is None:
            return
        feed.clients.discard(client)
        if not feed.clients:
            feed.stop()
            self.forget(feed)
            logger.info("tenant feed stopped", extra={"tenant_id": str(feed.tenant_id)})

    def forget(self, feed: TenantFeed) -> None:
        if self.feeds.get(feed.tenant_id) is feed:
            del self.feeds[feed.tenant_id]

    def stats(self) -> dict[str, Any]:
        return {"feeds": len(self.feeds),
                "clients": sum(len(f.clients) for f in self.feeds.values())}

    async def close(self) -> None:
        """Server shutdown: ask every client to go elsewhere, stop every reader."""
        feeds = list(self.feeds.values())
        for feed in feeds:
            for client in tuple(feed.clients):
                client.request_close(CloseCode.GOING_AWAY, "server shutting down")
            feed.stop()
        self.feeds.clear()
        for feed in feeds:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task


_hub: Hub | None = None


def get_hub() -> Hub:
    """The process's hub, created on first use in the running event loop."""
    global _hub
    if _hub is None:
        _hub = Hub(settings=get_settings().realtime)
    return _hub


async def close_hub() -> None:
    global _hub
    if _hub is not None:
        await _hub.close()
    _hub = None
