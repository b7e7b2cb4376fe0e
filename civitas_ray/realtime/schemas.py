"""Pydantic shapes of the realtime REST routes."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, Field

from civitas_ray.realtime.presence import Watcher


class PresenceWatcher(BaseModel):
    """One user watching the zone, over one or more connections (tabs, screens)."""

    user_id: uuid.UUID
    role: str | None
    connections: int = Field(ge=1)
    since: datetime = Field(description="When the user's earliest connection started watching")


class ZonePresence(BaseModel):
    zone_id: uuid.UUID
    watchers: list[PresenceWatcher]

    @classmethod
    def of(cls, zone_id: uuid.UUID, watchers: Iterable[Watcher]) -> ZonePresence:
        by_user: dict[uuid.UUID, PresenceWatcher] = {}
        for w in watchers:  # oldest first, so the first entry per user holds `since`
            seen = by_user.get(w.user_id)
            if seen is None:
                by_user[w.user_id] = PresenceWatcher(user_id=w.user_id, role=w.role,
                                                     connections=1, since=w.since)
            else:
                seen.connections += 1
        return cls(zone_id=zone_id, watchers=list(by_user.values()))
