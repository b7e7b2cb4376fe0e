"""The event bus: publish events to a tenant's Redis stream and read them back.

Every tenant has one stream, `civitas:<tenant uuid>:events`. Each entry has three
fields: `type` (`alert.fired`...), `channel` (`alerts`, `zone:<uuid>`...; see
`channels.py`) and `data` (a JSON object). Components that raise events (entity hosts,
the alert engine, the incident service) call `publish` once per batch, after the
transaction that made the events true has committed.

Event ids are Redis stream ids, `<milliseconds>-<sequence>` (e.g. `1719912345678-0`):
unique per tenant, strictly increasing in publication order, and the `last_event_id`
a WebSocket client resumes from. Compare them as pairs of integers, never as strings.
The stream keeps events for `realtime.stream_retention_s` (24 h by default) and at most
about `realtime.stream_max_len` of them; older ones are trimmed.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis

from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings
from civitas_ray.realtime.channels import ChannelError, parse_channel

logger = logging.getLogger(__name__)

StreamId = tuple[int, int]
RawEntry = tuple[str, dict[str, str]]

_ID_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_U64 = 2**64 - 1
ZERO_ID = "0-0"


class EventType(StrEnum):
    """The event types the platform publishes today; the bus accepts any dotted name."""

    ALERT_FIRED = "alert.fired"
    ALERT_RESOLVED = "alert.resolved"
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_UPDATED = "incident.updated"
    INCIDENT_RESOLVED = "incident.resolved"
    ZONE_STATE = "zone.state"
    TELEMETRY_ROLLUP = "telemetry.rollup"
    TRANSIT_VEHICLES = "transit.vehicles"
    PRESENCE_JOINED = "presence.joined"
    PRESENCE_LEFT = "presence.left"


def stream_key(tenant_id: uuid.UUID) -> str:
    return f"civitas:{tenant_id}:events"


def parse_id(text: str) -> StreamId:
    """`'1719912345678-3'` -> `(1719912345678, 3)`; ValueError for anything else."""
    m = _ID_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a stream id (<milliseconds>-<sequence>)")
    ms, seq = int(m.group(1)), int(m.group(2))
    if ms > _U64 or seq > _U64:
        raise ValueError(f"{text!r} is out of range")
    return ms, seq


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def id_before(sid: StreamId) -> StreamId:
    """The greatest id below `sid`, so that an inclusive start can be written exclusively."""
    ms, seq = sid
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, _U64) if ms > 0 else (0, 0)


@dataclass(frozen=True, slots=True)
class Event:
    """One event to publish. Positional order matches the `(type, channel, data)` tuples
    services return, so `Event(*t)` converts them."""

    type: str
    channel: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        """The stream entry, validated: a malformed event fails its publisher, not readers."""
        if not isinstance(self.type, str) or not _TYPE_RE.match(self.type) \
                or len(self.type) > 64:
            raise ValueError(f"event type {self.type!r} must be a dotted lower-case name")
        try:
            channel = parse_channel(self.channel, allow_wildcard=False)
        except (ChannelError, TypeError) as exc:
            raise ValueError(f"event channel: {exc}") from None
        if not isinstance(self.data, Mapping):
            raise ValueError("event data must be a JSON object (a mapping)")
        data = orjson.dumps(self.data, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        return {"type": self.type, "channel": channel.name, "data": data}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event read back from the stream, with its id."""

    id: str
    type: str
    channel: str
    data: dict[str, Any]

    def message(self) -> dict[str, Any]:
        """The WebSocket message for this event."""
        return {"type": self.type, "channel": self.channel, "id": self.id, "data": self.data}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_fields(fields: Mapping[Any, Any]) -> tuple[str, str, str]:
    """(type, channel, data JSON) of a raw entry; ValueError when it was not written by
    `publish` (missing fields, unknown channel, data that is not JSON)."""
    try:
        etype = _text(fields.get("type") or fields[b"type"])
        channel = _text(fields.get("channel") or fields[b"channel"])
        data = _text(fields.get("data") or fields[b"data"])
    except KeyError:
        raise ValueError("entry lacks type, channel or data") from None
    try:
        name = parse_channel(channel, allow_wildcard=False).name
        orjson.loads(data)
    except (ChannelError, orjson.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return etype, name, data


def _entries(reply: Any) -> list[RawEntry]:
    return [(_text(eid), fields) for eid, fields in reply or ()]


async def publish(tenant_id: uuid.UUID, events: Sequence[Event], *,
                  redis: aioredis.Redis | None = None) -> list[str]:
    """Append events to the tenant's stream in one pipelined round trip; return their ids.

    Each XADD trims by age (approximate MINID = now - retention), one XTRIM in the same
    pipeline caps the length and an EXPIRE drops a stream idle for a whole retention
    period, so streams stay bounded without a cleanup job.
    Raises ValueError for a malformed event (before anything is written) and Redis
    errors as they are: the caller decides whether to retry.
    """
    if not events:
        return []
    entries = [e.fields() for e in events]
    settings = get_settings().realtime
    client = redis if redis is not None else get_redis()
    key = stream_key(tenant_id)
    min_id = f"{max(0, int(time.time() * 1000) - settings.stream_retention_s * 1000)}-0"
    async with client.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.xadd(key, entry, minid=min_id, approximate=True)  # type: ignore[arg-type]
        pipe.xtrim(key, maxlen=settings.stream_max_len, approximate=True)
        # A stream that gets nothing for a whole retention period holds only expired
        # events: let it go (a deleted tenant's stream does not linger).
        pipe.expire(key, settings.stream_retention_s)
        results = await pipe.execute()
    return [_text(r) for r in results[: len(entries)]]


async def read_range(client: aioredis.Redis, key: str, after: str, until: str = "+", *,
                     count: int) -> list[RawEntry]:
    """Up to `count` raw entries with `after < id <= until` (XRANGE, exclusive start)."""
    return _entries(await client.xrange(key, f"({after}", until, count=count))


async def tail_id(client: aioredis.Redis, key: str) -> str:
    """The id of the newest entry, or `0-0` when the stream is empty or does not exist."""
    newest = _entries(await client.xrevrange(key, "+", "-", count=1))
    return newest[0][0] if newest else ZERO_ID


async def replay(tenant_id: uuid.UUID, after_id: str, *,
                 channels: Collection[str] | None = None, limit: int = 1_000,
                 until_id: str = "+", redis: aioredis.Redis | None = None,
                 ) -> list[StoredEvent]:
    """Up to `limit` events published after `after_id` (exclusive), oldest first.

    `channels` filters by channel name or pattern (`zone:*`); None means every channel.
    Pass the id of the last returned event as `after_id` to read the next page.
    """
    parse_id(after_id)
    wanted: set[str] | None = None
    if channels is not None:
        wanted = {parse_channel(c).name for c in channels}
    client = redis if redis is not None else get_redis()
    key = stream_key(tenant_id)
    page = max(limit, 100) if wanted is not None else limit
    out: list[StoredEvent] = []
    cursor = after_id
    while len(out) < limit:
        entries = await read_range(client, key, cursor, until_id, count=page)
        for eid, fields in entries:
            try:
                etype, channel, data = decode_fields(fields)
            except ValueError as exc:
                logger.warning("skipping a malformed stream entry",
                               extra={"stream": key, "entry_id": eid, "error": str(exc)})
                continue
            if wanted is not None:
                parsed = parse_channel(channel)
                if channel not in wanted and parsed.pattern not in wanted:
                    continue
            out.append(StoredEvent(id=eid, type=etype, channel=channel,
                                   data=orjson.loads(data)))
            if len(out) >= limit:
                break
        if len(entries) < page:
            break
        cursor = entries[-1][0]
    return out
