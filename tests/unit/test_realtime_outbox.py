"""The per-client outbox: coalescing state, dropping with exact gap records, frames."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from civitas_ray.realtime.events import parse_id
from civitas_ray.realtime.outbox import Outbox
from civitas_ray.realtime.wire import WireEvent, from_entry

pytestmark = pytest.mark.unit

ZONE = f"zone:{uuid.UUID(int=7)}"
_seq = iter(range(1, 1_000_000))


def ev(channel: str = "alerts", etype: str = "alert.fired", **data: Any) -> WireEvent:
    eid = f"1700000000000-{next(_seq)}"
    return from_entry(eid, {"type": etype, "channel": channel, "data": json.dumps(data)})


def box(capacity: int = 4, state_slots: int = 8) -> Outbox:
    return Outbox(capacity=capacity, state_slots=state_slots, max_gaps=4)


def drain(b: Outbox, max_items: int = 1_000) -> list[dict[str, Any]]:
    return [json.loads(m) for m in b.take(max_items, 1 << 20)]


def test_events_go_out_in_order_and_in_frames() -> None:
    b = box(capacity=10)
    sent = [ev(n=i) for i in range(5)]
    for e in sent:
        b.offer(e, "alerts")
    first = drain(b, max_items=3)
    assert [m["id"] for m in first] == [e.id for e in sent[:3]]
    assert first[0] == {"type": "alert.fired", "channel": "alerts", "id": sent[0].id,
                        "data": {"n": 0}}
    assert [m["id"] for m in drain(b)] == [e.id for e in sent[3:]]
    assert len(b) == 0 and drain(b) == []


def test_take_respects_a_byte_budget_but_always_makes_progress() -> None:
    b = box(capacity=10)
    for i in range(4):
        b.offer(ev(pad="x" * 1_000, n=i), "alerts")
    assert len(b.take(100, 10)) == 1
    assert len(b.take(100, 2_500)) == 3


def test_state_is_coalesced_in_place_keeping_the_newest() -> None:
    b = box()
    a1 = ev()
    b.offer(a1, "alerts")
    for seq in range(50):
        b.offer(ev(ZONE, "zone.state", seq=seq), ZONE)
    b.offer(ev(ZONE, "presence.joined", user="u"), ZONE)  # presence never coalesces
    a2 = ev()
    b.offer(a2, "alerts")
    out = drain(b)
    assert [(m["type"], m["data"]) for m in out] == [
        ("alert.fired", {}), ("zone.state", {"seq": 49}), ("presence.joined", {"user": "u"}),
        ("alert.fired", {})]
    assert b.dropped_total == 0


def test_full_queue_drops_until_half_drained_then_notices_exactly() -> None:
    b = box(capacity=4)  # low water: 2
    kept = [ev(n=i) for i in range(4)]
    for e in kept:
        b.offer(e, "alerts")
    dropped = [ev(n=i) for i in range(4, 7)]
    for e in dropped:
        b.offer(e, "alerts")
    b.offer(ev(ZONE, "zone.state", seq=1), ZONE)  # state still gets through
    assert b.dropping is not None and b.dropped_total == 3

    assert [m["data"]["n"] for m in drain(b, max_items=2)] == [0, 1]
    # Two events left, at low water: the next event ends the episode and is kept.
    after = ev(n=7)
    b.offer(after, "alerts")
    out = drain(b)
    assert [m.get("data", {}).get("n", m["type"]) for m in out[:3]] == [2, 3, "zone.state"]
    notice = out[3]
    assert notice == {"type": "notice", "code": "dropped", "count": 3,
                      "last_event_id": kept[-1].id, "until_id": dropped[-1].id,
                      "channels": ["alerts"]}
    assert out[4]["id"] == after.id
    assert b.dropping is None and len(b.gaps) == 1


def test_dropping_continues_while_above_low_water() -> None:
    b = box(capacity=4)
    for i in range(5):
        b.offer(ev(n=i), "alerts")  # the fifth is dropped
    drain(b, max_items=1)  # 3 left, above low water
    b.offer(ev(n=5), "alerts")  # still dropped: the episode stays exact
    assert b.dropped_total == 2 and b.queued_events == 3


def test_emptying_the_queue_ends_the_episode_with_its_notice() -> None:
    b = box(capacity=1)
    b.offer(ev(n=0), "alerts")
    b.offer(ev(n=1), "alerts")
    out = drain(b)
    assert [m["type"] for m in out] == ["alert.fired", "notice"]
    assert out[1]["count"] == 1


def test_gap_ranges_cover_exactly_the_dropped_events_once() -> None:
    b = box(capacity=2)
    events = [ev(n=i) for i in range(6)]
    for e in events:
        b.offer(e, "alerts")
    drain(b)
    ranges = b.gap_ranges("alerts", parse_id(events[1].id))
    (start, end), = ranges
    covered = [e.id for e in events if start < e.sid <= end]
    assert covered == [e.id for e in events[2:]]
    assert b.gap_ranges("alerts", (0, 0)) == []  # re-sent once, then forgotten
    assert not b.gaps


def test_gap_ranges_are_per_subscription_and_clipped_by_the_resume_point() -> None:
    b = box(capacity=1)
    b.offer(ev(), "alerts")
    inc = [ev("incidents", "incident.updated") for _ in range(3)]
    for e in inc:
        b.offer(e, "incidents")
    assert b.gap_ranges("alerts", (0, 0)) == []
    (start, end), = b.gap_ranges("incidents", inc[0].sid)
    assert start == inc[0].sid and end == inc[2].sid


def test_state_overflow_is_flagged_not_grown() -> None:
    b = box(state_slots=2)
    for i in range(3):
        b.offer(ev(f"zone:{uuid.UUID(int=i)}", "zone.state"), "zone:*")
    assert b.overflowed and len(b) == 2


def test_discard_forgets_a_subscription() -> None:
    b = box(capacity=2)
    b.offer(ev(), "alerts")
    b.offer(ev(ZONE, "zone.state"), ZONE)
    b.offer(ev(), "alerts")
    b.offer(ev(), "alerts")  # dropped
    b.discard(["alerts"])
    assert [m["type"] for m in drain(b)] == ["zone.state", "notice"]
    assert b.gap_ranges("alerts", (0, 0)) == []
