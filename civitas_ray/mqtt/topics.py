"""The MQTT topic contract: which topics carry readings, and where rejections go.

    {prefix}/{tenant_slug}/telemetry/{asset}   one reading, a list, or {"readings": [...]}
    {prefix}/{tenant_slug}/senml               RFC 8428 pack, names `<asset>/<metric>`
    {prefix}/{tenant_slug}/senml/{asset}       RFC 8428 pack, names are bare metrics
    {prefix}/{tenant_slug}/signals/{asset}     a signal controller message (docs/feeds.md)

Rejections of a message go to `{prefix}/{tenant_slug}/rejected/{kind}[/{asset}]`: one
tenant-wide subtree (`.../rejected/#`) that no ingest subscription matches, so they
never loop back into the bridge (`.../senml/rejected` would match `senml/+`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Tenant slugs as the tenants domain accepts them (lower case, digits, inner dashes).
_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_ASSET_LEN = 128

Kind = Literal["telemetry", "senml", "signals"]


class TopicError(ValueError):
    """The topic is not one of the ingest topics."""


@dataclass(frozen=True, slots=True)
class Route:
    """What a topic says about its message: the tenant, the format and maybe the asset."""

    tenant_slug: str
    kind: Kind
    asset: str | None  # UUID text or external id; None for a tenant-wide SenML pack
    topic: str

    @property
    def rejected_topic(self) -> str:
        prefix = self.topic.split("/", 1)[0]
        tail = f"/{self.asset}" if self.asset is not None else ""
        return f"{prefix}/{self.tenant_slug}/rejected/{self.kind}{tail}"


def _asset(raw: str) -> str:
    if not raw or len(raw) > MAX_ASSET_LEN:
        raise TopicError(f"asset id {raw[:40]!r} in the topic is empty or too long")
    return raw


def parse_topic(topic: str, *, prefix: str = "civitas") -> Route:
    """The route of an ingest topic; TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix:
        raise TopicError(f"topic {topic[:80]!r} is not under {prefix}/")
    slug, kind = parts[1], parts[2]
    if not _SLUG_RE.match(slug):
        raise TopicError(f"tenant slug {slug[:40]!r} in the topic is not valid")
    if kind == "telemetry" and len(parts) == 4:
        return Route(slug, "telemetry", _asset(parts[3]), topic)
    if kind == "signals" and len(parts) == 4:
        return Route(slug, "signals", _asset(parts[3]), topic)
    if kind == "senml" and len(parts) == 3:
        return Route(slug, "senml", None, topic)
    if kind == "senml" and len(parts) == 4:
        return Route(slug, "senml", _asset(parts[3]), topic)
    raise TopicError(f"topic {topic[:80]!r} is not {prefix}/<tenant>/telemetry/<asset>, "
                     f"{prefix}/<tenant>/senml or {prefix}/<tenant>/senml/<asset>")


def subscriptions(*, prefix: str = "civitas", share_group: str | None = "civitas") -> list[str]:
    """The bridge's subscriptions; MQTT v5 shared ones (`$share/group/...`) with a group."""
    filters = [f"{prefix}/+/telemetry/+", f"{prefix}/+/senml", f"{prefix}/+/senml/+",
               f"{prefix}/+/signals/+"]
    if share_group:
        return [f"$share/{share_group}/{f}" for f in filters]
    return filters
