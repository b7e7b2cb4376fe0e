"""Channel names: their grammar, the permission each needs, and which ones coalesce.

A channel is what a client subscribes to and what every event is published on:

| channel                      | carries                                  | permission      |
|------------------------------|------------------------------------------|-----------------|
| `alerts`                     | `alert.fired`, `alert.resolved`          | incidents:read  |
| `incidents`                  | `incident.opened`, `incident.updated`... | incidents:read  |
| `zone:<zone uuid>`           | `zone.state`, `presence.joined/left`     | zones:read      |
| `stream:<asset uuid>/<metric>` | `telemetry.rollup`, stream state       | telemetry:read  |
| `transit:vehicles`           | vehicle position snapshots               | zones:read      |

Clients may also subscribe to the patterns `zone:*` and `stream:*` (every zone, every
stream of their tenant); events are always published on a concrete channel.

`zone:*`, `stream:*` and `transit:vehicles` are *state* channels: each event carries the
whole current state of its subject, so a slow client only needs the newest one per
(channel, type) and older ones are coalesced away. Presence events are the exception:
each join and leave matters. Everything else is an *event* channel whose events are
each delivered or explicitly reported as dropped.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from civitas_ray.auth.permissions import Perm

# The same metric grammar as telemetry ingest accepts.
_METRIC_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
MAX_CHANNEL_LEN = 128


class ChannelKind(StrEnum):
    ALERTS = "alerts"
    INCIDENTS = "incidents"
    ZONE = "zone"
    STREAM = "stream"
    TRANSIT = "transit"


CHANNEL_PERMISSION: dict[ChannelKind, Perm] = {
    ChannelKind.ALERTS: Perm.INCIDENTS_READ,
    ChannelKind.INCIDENTS: Perm.INCIDENTS_READ,
    ChannelKind.ZONE: Perm.ZONES_READ,
    ChannelKind.STREAM: Perm.TELEMETRY_READ,
    ChannelKind.TRANSIT: Perm.ZONES_READ,
}

STATE_KINDS = frozenset({ChannelKind.ZONE, ChannelKind.STREAM, ChannelKind.TRANSIT})

# Channels with a fixed name, and the wildcard patterns a client may subscribe to.
_FIXED = {"alerts": ChannelKind.ALERTS, "incidents": ChannelKind.INCIDENTS,
          "transit:vehicles": ChannelKind.TRANSIT}
PATTERNS = {"zone:*": ChannelKind.ZONE, "stream:*": ChannelKind.STREAM}


class ChannelError(ValueError):
    """A channel name that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel. `name` is canonical (lower-case UUIDs), so equal channels compare
    equal as strings; `pattern` is the wildcard that also covers it (`zone:*`), if any."""

    name: str
    kind: ChannelKind
    wildcard: bool = False
    zone_id: uuid.UUID | None = None
    asset_id: uuid.UUID | None = None
    metric: str | None = None

    @property
    def permission(self) -> Perm:
        return CHANNEL_PERMISSION[self.kind]

    @property
    def is_state(self) -> bool:
        return self.kind in STATE_KINDS

    @property
    def pattern(self) -> str | None:
        if self.wildcard or self.kind not in (ChannelKind.ZONE, ChannelKind.STREAM):
            return None
        return f"{self.kind}:*"


def _uuid(text: str, what: str, raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ChannelError(f"{raw!r}: {what} must be a UUID") from None


@lru_cache(maxsize=65_536)
def parse_channel(raw: str, *, allow_wildcard: bool = True) -> Channel:
    """Parse and canonicalise a channel name; raise ChannelError when it is malformed.

    Cached: the hub parses the channel of every event it reads, and channels repeat.
    """
    if not isinstance(raw, str) or not raw or len(raw) > MAX_CHANNEL_LEN:
        raise ChannelError(f"a channel is a non-empty string of at most {MAX_CHANNEL_LEN} "
                           "characters")
    if raw in _FIXED:
        return Channel(name=raw, kind=_FIXED[raw])
    if raw in PATTERNS:
        if not allow_wildcard:
            raise ChannelError(f"{raw!r}: events are published on a concrete channel")
        return Channel(name=raw, kind=PATTERNS[raw], wildcard=True)
    prefix, sep, rest = raw.partition(":")
    if sep and prefix == ChannelKind.ZONE:
        zone_id = _uuid(rest, "the zone id", raw)
        return Channel(name=f"zone:{zone_id}", kind=ChannelKind.ZONE, zone_id=zone_id)
    if sep and prefix == ChannelKind.STREAM:
        asset, slash, metric = rest.partition("/")
        if not slash or not _METRIC_RE.match(metric):
            raise ChannelError(f"{raw!r}: expected stream:<asset uuid>/<metric>")
        asset_id = _uuid(asset, "the asset id", raw)
        return Channel(name=f"stream:{asset_id}/{metric}", kind=ChannelKind.STREAM,
                       asset_id=asset_id, metric=metric)
    raise ChannelError(f"{raw!r} is not a known channel (alerts, incidents, zone:<uuid>, "
                       "stream:<asset uuid>/<metric>, transit:vehicles, zone:*, stream:*)")


def coalesce_key(channel: Channel, event_type: str) -> str | None:
    """The key under which a slow client keeps only the newest event, or None when every
    event must be delivered (or reported dropped)."""
    if not channel.is_state or event_type.startswith("presence."):
        return None
    return f"{channel.name}|{event_type}"
