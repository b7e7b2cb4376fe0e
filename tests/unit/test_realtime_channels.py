"""Channel grammar, canonical names, the permission each channel needs, and coalescing."""

from __future__ import annotations

import uuid

import pytest

from civitas_ray.auth.permissions import ROLE_PERMISSIONS, Perm
from civitas_ray.realtime.channels import (
    ChannelError,
    ChannelKind,
    coalesce_key,
    parse_channel,
)

pytestmark = pytest.mark.unit

ZONE = uuid.UUID("6f1c2b1e-8d2a-4c55-9a43-0f3a1d2e9b10")
ASSET = uuid.UUID("0b8e5f0e-2d7c-4a1b-8f3e-5c6d7e8f9a0b")


@pytest.mark.parametrize(("raw", "name", "kind", "perm"), [
    ("alerts", "alerts", ChannelKind.ALERTS, Perm.INCIDENTS_READ),
    ("incidents", "incidents", ChannelKind.INCIDENTS, Perm.INCIDENTS_READ),
    (f"zone:{ZONE}", f"zone:{ZONE}", ChannelKind.ZONE, Perm.ZONES_READ),
    (f"zone:{str(ZONE).upper()}", f"zone:{ZONE}", ChannelKind.ZONE, Perm.ZONES_READ),
    (f"zone:{ZONE.hex}", f"zone:{ZONE}", ChannelKind.ZONE, Perm.ZONES_READ),
    (f"stream:{ASSET}/traffic_volume", f"stream:{ASSET}/traffic_volume", ChannelKind.STREAM,
     Perm.TELEMETRY_READ),
    (f"stream:{str(ASSET).upper()}/pm2.5", f"stream:{ASSET}/pm2.5", ChannelKind.STREAM,
     Perm.TELEMETRY_READ),
    ("transit:vehicles", "transit:vehicles", ChannelKind.TRANSIT, Perm.ZONES_READ),
    ("zone:*", "zone:*", ChannelKind.ZONE, Perm.ZONES_READ),
    ("stream:*", "stream:*", ChannelKind.STREAM, Perm.TELEMETRY_READ),
])
def test_valid_channels_parse_to_canonical_names(raw: str, name: str, kind: ChannelKind,
                                                 perm: Perm) -> None:
    ch = parse_channel(raw)
    assert (ch.name, ch.kind, ch.permission) == (name, kind, perm)


@pytest.mark.parametrize("raw", [
    "", "alert", "ALERTS", "zone:", "zone:42", "zone:not-a-uuid", f"zone:{ZONE}/x",
    f"stream:{ASSET}", f"stream:{ASSET}/", "stream:nope/flow", f"stream:{ASSET}/a b",
    f"stream:{ASSET}/" + "m" * 65, "transit:buses", "transit:*", "alerts:*", "*",
    "x" * 200,
])
def test_malformed_channels_are_refused(raw: str) -> None:
    with pytest.raises(ChannelError):
        parse_channel(raw)


def test_patterns_are_for_subscribers_only() -> None:
    assert parse_channel("zone:*").wildcard
    with pytest.raises(ChannelError):
        parse_channel("zone:*", allow_wildcard=False)


def test_concrete_channels_name_the_pattern_that_covers_them() -> None:
    assert parse_channel(f"zone:{ZONE}").pattern == "zone:*"
    assert parse_channel(f"stream:{ASSET}/flow").pattern == "stream:*"
    assert parse_channel("alerts").pattern is None
    assert parse_channel("transit:vehicles").pattern is None
    assert parse_channel("zone:*").pattern is None


def test_roles_and_channels() -> None:
    """The permission map read through the roles: what each role may subscribe to."""
    channels = ["alerts", "incidents", f"zone:{ZONE}", f"stream:{ASSET}/flow",
                "transit:vehicles"]

    def readable(role: str) -> set[str]:
        perms = ROLE_PERMISSIONS[role]
        return {c for c in channels if parse_channel(c).permission in perms}

    assert readable("viewer") == set(channels) - {f"stream:{ASSET}/flow"}
    for role in ("analyst", "operator", "tenant_admin", "platform_admin"):
        assert readable(role) == set(channels)


def test_only_state_events_coalesce() -> None:
    zone = parse_channel(f"zone:{ZONE}")
    assert coalesce_key(zone, "zone.state") == f"zone:{ZONE}|zone.state"
    assert coalesce_key(zone, "presence.joined") is None  # every join matters
    stream = parse_channel(f"stream:{ASSET}/flow")
    assert coalesce_key(stream, "telemetry.rollup") == f"stream:{ASSET}/flow|telemetry.rollup"
    assert coalesce_key(parse_channel("transit:vehicles"), "transit.vehicles") is not None
    assert coalesce_key(parse_channel("alerts"), "alert.fired") is None
    assert coalesce_key(parse_channel("incidents"), "incident.updated") is None
