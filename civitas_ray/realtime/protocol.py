"""The WebSocket protocol's vocabulary: close codes and the messages clients send.

The full protocol, with examples, is in docs/websocket.md.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down: reconnect elsewhere
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the event stream (Redis) is unreachable at connect
    TOO_SLOW = 4008  # stayed hopelessly behind: reconnect with last_event_id
    BAD_MESSAGE = 4400  # repeated malformed messages, or one too large
    UNAUTHENTICATED = 4401  # no, bad or expired access token
    FORBIDDEN = 4403  # a device API key, or repeated forbidden subscriptions
    AUTH_TIMEOUT = 4408  # no auth message within realtime.auth_timeout_s


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    data = text.encode()[:123]
    return data.decode(errors="ignore")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str | int | None = Field(None, description="Echoed in the reply, for correlation")


class AuthMessage(_Message):
    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=8_192)


class SubscribeMessage(_Message):
    type: Literal["subscribe"]
    channels: list[str] = Field(min_length=1, max_length=256)
    last_event_id: str | None = Field(None, max_length=41)


class UnsubscribeMessage(_Message):
    type: Literal["unsubscribe"]
    channels: list[str] = Field(min_length=1, max_length=256)


class PingMessage(_Message):
    type: Literal["ping"]


ClientMessage = Annotated[AuthMessage | SubscribeMessage | UnsubscribeMessage | PingMessage,
                          Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def error(code: str, detail: str, *, ref: str | int | None = None,
          **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "detail": detail, **extra}
    if ref is not None:
        out["ref"] = ref
    return out
