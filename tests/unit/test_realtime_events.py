"""Event validation, stream ids, and the wire messages built from stream entries."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from civitas_ray.realtime.events import Event, format_id, id_before, parse_id, stream_key
from civitas_ray.realtime.protocol import CLIENT_MESSAGE, SubscribeMessage, close_reason
from civitas_ray.realtime.wire import frame, from_entry

pytestmark = pytest.mark.unit

ZONE = uuid.UUID(int=3)


def test_stream_key_is_per_tenant() -> None:
    t = uuid.UUID(int=1)
    assert stream_key(t) == f"civitas:{t}:events"


def test_ids_parse_compare_as_numbers_and_step_back() -> None:
    assert parse_id("1719912345678-3") == (1719912345678, 3)
    assert parse_id("9-10") > parse_id("9-9")  # not string order
    assert parse_id("10-0") > parse_id("9-99")
    assert format_id((5, 2)) == "5-2"
    assert id_before((5, 2)) == (5, 1)
    assert id_before((5, 0)) == (4, 2**64 - 1)
    assert id_before((0, 0)) == (0, 0)
    for bad in ["", "5", "5-", "-1-2", "a-b", "1-2-3", "1 -2", "99999999999999999999-0"]:
        with pytest.raises(ValueError):
            parse_id(bad)


def test_event_fields_are_validated_and_canonical() -> None:
    fields = Event("zone.state", f"zone:{str(ZONE).upper()}",
                   {"at": datetime(2024, 1, 1, tzinfo=UTC), "v": np.float64(1.5),
                    "asset": uuid.UUID(int=9)}).fields()
    assert fields["channel"] == f"zone:{ZONE}"
    assert json.loads(fields["data"]) == {"at": "2024-01-01T00:00:00+00:00", "v": 1.5,
                                          "asset": str(uuid.UUID(int=9))}
    # Services hand out (type, channel, data) tuples.
    assert Event(*("alert.fired", "alerts", {"x": 1})).fields()["type"] == "alert.fired"


@pytest.mark.parametrize("event", [
    Event("Alert Fired", "alerts"), Event("alert", "alerts"), Event("alert.fired", "zone:*"),
    Event("alert.fired", "nowhere"), Event("alert.fired", "alerts", [1, 2]),  # type: ignore[arg-type]
])
def test_malformed_events_fail_their_publisher(event: Event) -> None:
    with pytest.raises(ValueError):
        event.fields()


def test_wire_message_is_built_once_and_is_valid_json() -> None:
    fields = Event("alert.fired", "alerts", {"msg": 'quote " and \u00e9'}).fields()
    w = from_entry("17-2", fields)
    assert json.loads(w.message) == {"type": "alert.fired", "channel": "alerts", "id": "17-2",
                                     "data": {"msg": 'quote " and \u00e9'}}
    assert w.sid == (17, 2) and w.coalesce is None
    state = from_entry("17-3", Event("zone.state", f"zone:{ZONE}", {}).fields())
    assert state.coalesce == f"zone:{ZONE}|zone.state"
    with pytest.raises(ValueError):
        from_entry("17-4", {"type": "x.y", "channel": "alerts", "data": "{not json"})
    with pytest.raises(ValueError):
        from_entry("17-5", {"type": "x.y", "channel": "alerts"})


def test_frames_are_one_object_or_an_array() -> None:
    assert frame(['{"a":1}']) == '{"a":1}'
    assert json.loads(frame(['{"a":1}', '{"b":2}'])) == [{"a": 1}, {"b": 2}]


def test_client_messages_are_strict() -> None:
    m = CLIENT_MESSAGE.validate_python({"type": "subscribe", "channels": ["alerts"],
                                        "last_event_id": "1-0", "ref": 4})
    assert isinstance(m, SubscribeMessage) and m.ref == 4
    for bad in [{"type": "subscribe"}, {"type": "subscribe", "channels": []},
                {"type": "subscribe", "channels": ["alerts"], "extra": 1}, {"type": "nope"},
                {"channels": ["alerts"]}]:
        with pytest.raises(ValueError):
            CLIENT_MESSAGE.validate_python(bad)


def test_close_reasons_fit_the_frame() -> None:
    assert len(close_reason("é" * 200).encode()) <= 123
