"""Notification channels: one interface, so in-app, log, SMTP, SMS and push plug in alike.

A channel gets a `Notification` (one recipient, one message) and returns a `Delivery`
saying whether it went out. Channels never raise for a delivery failure: the notifier
records the failure and carries on with the other recipients. Today: `in_app` (a
`notification.created` event on the tenant stream, which the user's WebSocket receives
on the `incidents` channel) and `log`. Register more with `register_channel`.
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event

log = logging.getLogger(__name__)

NOTIFICATION_EVENT = "notification.created"


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one recipient about one incident."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    role: str
    incident_id: uuid.UUID
    severity: str
    title: str
    body: str
    reason: str  # why this user: "rule", "escalation:1", "preference"
    data: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in d.items()}


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    ok: bool
    detail: str | None = None


class NotificationChannel(ABC):
    """A way to reach a person; `name` is what tenant settings and preferences refer to."""

    name: str

    @abstractmethod
    async def send(self, n: Notification) -> Delivery:
        """Deliver `n`; report failure in the Delivery rather than raising."""


class InAppChannel(NotificationChannel):
    """A `notification.created` event on the tenant stream, for the user's WebSocket."""

    name = "in_app"

    async def send(self, n: Notification) -> Delivery:
        event = Event(type=NOTIFICATION_EVENT, channel="incidents", data=n.payload())
        try:
            now = await relay.send(n.tenant_id, [event])
        except Exception as exc:  # a malformed payload fails this delivery, not the run
            log.exception("in-app notification not published",
                          extra={"tenant_id": str(n.tenant_id), "user_id": str(n.user_id)})
            return Delivery(self.name, False, repr(exc))
        return Delivery(self.name, True, None if now else "deferred until Redis is back")


class LogChannel(NotificationChannel):
    """A structured log line: the channel of record in development and the fallback."""

    name = "log"

    async def send(self, n: Notification) -> Delivery:
        log.info("notification", extra={"tenant_id": str(n.tenant_id),
                                        "user_id": str(n.user_id), "role": n.role,
                                        "incident_id": str(n.incident_id),
                                        "severity": n.severity, "reason": n.reason,
                                        "title": n.title})
        return Delivery(self.name, True)


_FACTORIES: dict[str, Callable[[], NotificationChannel]] = {
    InAppChannel.name: InAppChannel, LogChannel.name: LogChannel,
}
DEFAULT_CHANNELS: tuple[str, ...] = (InAppChannel.name, LogChannel.name)


def register_channel(name: str, factory: Callable[[], NotificationChannel]) -> None:
    """Make a channel (SMTP, SMS, push...) available by name to settings and preferences."""
    _FACTORIES[name] = factory


def known_channels() -> list[str]:
    return sorted(_FACTORIES)


def get_channel(name: str) -> NotificationChannel:
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise ValueError(f"unknown notification channel {name!r}; "
                         f"known: {', '.join(known_channels())}") from None
