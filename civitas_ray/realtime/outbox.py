"""A client's bounded outgoing queue: coalesce state, drop the rest when full, say so.

Pure (no I/O, no clock) so it is unit-tested directly. The hub offers every
event a client should get; the client's sender takes frames' worth of messages out.

- State events (see `channels.coalesce_key`) keep one slot per key: a newer one
  replaces the queued one in place, so a slow client gets the latest state, not a
  backlog. More than `state_slots` distinct keys marks the outbox `overflowed`.
- Other events queue up to `capacity`. When full, the outbox starts a *drop episode*:
  it drops every droppable event offered until the queue has drained to half, then
  queues one `dropped` notice at that point. Dropping everything in between (not only
  what does not fit) is what makes the episode exact: every droppable event on the
  listed channels from the first drop to `until_id` was dropped, none delivered, so a
  gap fill can re-send exactly those without duplicates.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson

from civitas_ray.realtime.events import StreamId, format_id, id_before, parse_id
from civitas_ray.realtime.wire import WireEvent


@dataclass(slots=True)
class Gap:
    """One drop episode on one client."""

    after: str  # the last event offered to the client before the first drop
    last: str  # the last event dropped
    count: int = 0
    first: dict[str, StreamId] = field(default_factory=dict)  # subscription -> first drop

    def notice(self) -> dict[str, Any]:
        return {"type": "notice", "code": "dropped", "count": self.count,
                "last_event_id": self.after, "until_id": self.last,
                "channels": sorted(self.first)}


class Outbox:
    def __init__(self, *, capacity: int, state_slots: int, max_gaps: int) -> None:
        if capacity < 1 or state_slots < 1:
            raise ValueError("capacity and state_slots must be at least 1")
        self.capacity = capacity
        self.low_water = capacity // 2
        self.state_slots = state_slots
        # key -> (message JSON, subscription key); keys are ("e", id), ("s", coalesce
        # key) or ("n", sequence) for notices.
        self._items: OrderedDict[Hashable, tuple[str, str]] = OrderedDict()
        self._events = 0
        self._states = 0
        self._notices = 0
        self.last_offered: str | None = None
        self.dropping: Gap | None = None
        self.gaps: deque[Gap] = deque(maxlen=max_gaps)
        self.overflowed = False
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_events(self) -> int:
        return self._events

    def offer(self, event: WireEvent, sub_key: str) -> None:
        """Queue, coalesce or drop one event; never blocks, never grows past its bounds."""
        if event.coalesce is not None:
            key: Hashable = ("s", event.coalesce)
            if key in self._items:
                self._items[key] = (event.message, sub_key)
            elif self._states < self.state_slots:
                self._items[key] = (event.message, sub_key)
                self._states += 1
            else:
                self.overflowed = True
        else:
            if self.dropping is not None and self._events <= self.low_water:
                self._close_episode()
            if self.dropping is not None or self._events >= self.capacity:
                self._drop(event, sub_key)
            else:
                self._items[("e", event.id)] = (event.message, sub_key)
                self._events += 1
        self.last_offered = event.id

    def _drop(self, event: WireEvent, sub_key: str) -> None:
        gap = self.dropping
        if gap is None:
            gap = self.dropping = Gap(after=self.last_offered or format_id(id_before(event.sid)),
                                      last=event.id)
        gap.count += 1
        gap.last = event.id
        gap.first.setdefault(sub_key, event.sid)
        self.dropped_total += 1

    def _close_episode(self) -> None:
        gap = self.dropping
        assert gap is not None
        self._notices += 1
        self._items[("n", self._notices)] = (orjson.dumps(gap.notice()).decode(), "")
        self.gaps.append(gap)
        self.dropping = None

    def take(self, max_items: int, max_bytes: int) -> list[str]:
        """Pop up to `max_items` messages (and about `max_bytes`, at least one), oldest
        first. Emptying the queue ends a drop episode, so its notice follows at once."""
        out: list[str] = []
        size = 0
        while self._items and len(out) < max_items and (not out or size < max_bytes):
            key, (message, _) = self._items.popitem(last=False)
            self._forget(key)
            out.append(message)
            size += len(message)
        if not self._items and self.dropping is not None and len(out) < max_items:
            self._close_episode()
            key, (message, _) = self._items.popitem(last=False)
            self._forget(key)
            out.append(message)
        return out

    def _forget(self, key: Hashable) -> None:
        kind = key[0]  # type: ignore[index]
        if kind == "e":
            self._events -= 1
        elif kind == "s":
            self._states -= 1

    def discard(self, sub_keys: Collection[str]) -> None:
        """Forget queued events and gap records of subscriptions the client dropped."""
        for key in [k for k, (_, sub) in self._items.items() if sub in sub_keys]:
            del self._items[key]
            self._forget(key)
        for gap in [*self.gaps, *([self.dropping] if self.dropping else [])]:
            for sub in sub_keys:
                gap.first.pop(sub, None)

    def gap_ranges(self, sub_key: str, after: StreamId) -> list[tuple[StreamId, StreamId]]:
        """Ranges `(exclusive start, inclusive end)` of events dropped on `sub_key` after
        `after`, forgotten once returned (the caller re-sends them)."""
        ranges: list[tuple[StreamId, StreamId]] = []
        for gap in [*self.gaps, *([self.dropping] if self.dropping else [])]:
            first = gap.first.pop(sub_key, None)
            if first is None:
                continue
            start = max(id_before(first), after)
            end = parse_id(gap.last)
            if start < end:
                ranges.append((start, end))
        for gap in [g for g in self.gaps if not g.first]:
            self.gaps.remove(gap)
        return ranges
