"""One WebSocket connection: authentication, client messages, presence, and closing.

The protocol is documented in docs/websocket.md. A connection runs three things: its
receive loop (client messages), the hub client's sender task (the only writer), and a
supervisor that waits for either to end, for the hub to ask for a close (4008), for
the access token to expire (4401) and for presence heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from civitas_ray.auth.deps import Principal, principal_from_token
from civitas_ray.auth.security import API_KEY_PREFIX, decode_access_token
from civitas_ray.config import get_settings
from civitas_ray.db.session import get_sessionmaker
from civitas_ray.errors import Unauthorized
from civitas_ray.realtime import presence
from civitas_ray.realtime.channels import Channel, ChannelError, parse_channel
from civitas_ray.realtime.events import parse_id
from civitas_ray.realtime.hub import REDIS_ERRORS, Client, Hub
from civitas_ray.realtime.protocol import (
    CLIENT_MESSAGE,
    AuthMessage,
    CloseCode,
    PingMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    close_reason,
    error,
)

logger = logging.getLogger(__name__)

Verdict = tuple[int, str] | None  # a close (code, reason), or None to carry on
_DISCONNECTED = object()
_DEVICE_KEY_REFUSED = (CloseCode.FORBIDDEN,
                       "device API keys cannot open a WebSocket; sign in as a user")


class Connection:
    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.ws = websocket
        self.hub = hub
        self.settings = hub.settings
        self.id = uuid.uuid4().hex
        self.principal: Principal | None = None
        self.client: Client | None = None
        self.deadline = 0.0  # loop time at which the access token expires
        self.expires_at = datetime.now(UTC)
        self.watching: dict[uuid.UUID, presence.Watcher] = {}
        self.bad_messages = 0
        self.refused = 0

    async def run(self) -> None:
        await self.ws.accept()
        verdict: Verdict
        try:
            verdict = await self._lifecycle()
        except Exception:
            logger.exception("websocket connection failed", extra={"connection_id": self.id})
            verdict = (CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._cleanup()
        if verdict is not None:
            await self._close(*verdict)

    async def _close(self, code: int, reason: str) -> None:
        # A client that stopped reading may never take the close frame: bounded wait.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, close_reason(reason)),
                                   self.settings.close_timeout_s)
        logger.info("websocket closed", extra={"connection_id": self.id, "code": code,
                                               "reason": reason})

    async def _cleanup(self) -> None:
        if self.client is not None:
            self.hub.detach(self.client)
        if self.watching and self.principal is not None:
            try:
                for zone_id, watcher in self.watching.items():
                    await presence.leave(tenant_id=self.principal.tenant_id,
                                         zone_ids=[zone_id], watcher=watcher)
            except REDIS_ERRORS as exc:
                logger.warning("presence not cleared; entries will expire",
                               extra={"connection_id": self.id, "error": repr(exc)})
            self.watching.clear()

    # -- authentication ---------------------------------------------------------------

    async def _receive(self) -> str | bytes | object:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return _DISCONNECTED
        text = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def _lifecycle(self) -> Verdict:
        if "x-api-key" in self.ws.headers:
            return _DEVICE_KEY_REFUSED
        token = self.ws.query_params.get("token")
        ref: str | int | None = None
        if not token:
            try:
                raw = await asyncio.wait_for(self._receive(), self.settings.auth_timeout_s)
            except TimeoutError:
                return (CloseCode.AUTH_TIMEOUT,
                        f"no auth message within {self.settings.auth_timeout_s:g} s")
            if raw is _DISCONNECTED:
                return None
            message = self._parse(raw)
            if not isinstance(message, AuthMessage):
                return (CloseCode.UNAUTHENTICATED,
                        'authenticate first: ?token= or {"type":"auth","token":...}')
            token, ref = message.token, message.ref
        verdict = await self._authenticate(token)
        if verdict is not None:
            return verdict
        principal = self.principal
        assert principal is not None
        self.client = Client(hub=self.hub, tenant_id=principal.tenant_id, user_id=principal.id,
                             permissions=principal.permissions, send_text=self.ws.send_text)
        try:
            await self.hub.attach(self.client)
        except REDIS_ERRORS:
            self.client = None
            return CloseCode.TRY_AGAIN_LATER, "the event stream is unavailable; retry shortly"
        self.client.control(self._authenticated(ref))
        logger.info("websocket authenticated",
                    extra={"connection_id": self.id, "user_id": str(principal.id),
                           "tenant_id": str(principal.tenant_id)})
        return await self._supervise()

    async def _authenticate(self, token: str) -> Verdict:
        """Check a token exactly as HTTP requests are checked; set principal and deadline."""
        if token.startswith(API_KEY_PREFIX + "_"):
            return _DEVICE_KEY_REFUSED
        try:
            claims = decode_access_token(token, settings=get_settings().auth)
            async with get_sessionmaker()() as session, session.begin():
                principal = await principal_from_token(session, token)
        except Unauthorized as exc:
            return CloseCode.UNAUTHENTICATED, exc.detail
        if self.principal is not None and (principal.id, principal.tenant_id) != \
                (self.principal.id, self.principal.tenant_id):
            return CloseCode.UNAUTHENTICATED, "the new token belongs to another user"
        self.principal = principal
        remaining = (claims.expires_at - datetime.now(UTC)).total_seconds()
        self.deadline = asyncio.get_running_loop().time() + remaining
        self.expires_at = claims.expires_at
        return None

    def _authenticated(self, ref: str | int | None) -> dict[str, Any]:
        p = self.principal
        assert p is not None
        out: dict[str, Any] = {
            "type": "authenticated", "user_id": str(p.id), "tenant_id": str(p.tenant_id),
            "role": p.role, "expires_at": self.expires_at.isoformat(),
            "permissions": sorted(str(x) for x in p.permissions)}
        if ref is not None:
            out["ref"] = ref
        return out

    # -- the connected phase ----------------------------------------------------------

    async def _supervise(self) -> Verdict:
        client = self.client
        assert client is not None
        loop = asyncio.get_running_loop()
        receiver = asyncio.create_task(self._receive_loop(), name=f"ws-recv-{self.id}")
        sender = asyncio.create_task(client.run_sender(), name=f"ws-send-{self.id}")
        heartbeat_at = loop.time() + self.settings.presence_heartbeat_s
        ends: set[asyncio.Future[Any]] = {receiver, sender, client.closing}
        try:
            while True:
                now = loop.time()
                if now >= self.deadline:
                    return (CloseCode.UNAUTHENTICATED,
                            "access token expired; reconnect, or send a fresh token in an "
                            "auth message before it expires")
                if now >= heartbeat_at:
                    await self._heartbeat()
                    heartbeat_at = now + self.settings.presence_heartbeat_s
                timeout = max(0.0, min(self.deadline, heartbeat_at) - now)
                done, _ = await asyncio.wait(ends, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if client.closing in done:
                    return client.closing.result()
                if receiver in done:
                    return receiver.result()
                if sender in done:
                    exc = sender.exception()
                    if isinstance(exc, WebSocketDisconnect | OSError):
                        return None  # the client went away mid-send
                    logger.error("websocket sender failed", exc_info=exc,
                                 extra={"connection_id": self.id})
                    return CloseCode.INTERNAL_ERROR, "internal error"
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)
            self._log_stats()

    def _log_stats(self) -> None:
        client = self.client
        if client is not None:
            logger.info("websocket session ended", extra={
                "connection_id": self.id, "frames": client.stats.frames,
                "messages": client.stats.messages, "replayed": client.stats.replayed,
                "dropped": client.outbox.dropped_total})

    async def _heartbeat(self) -> None:
        if self.watching and self.principal is not None:
            try:
                await presence.refresh(tenant_id=self.principal.tenant_id, zones=self.watching)
            except REDIS_ERRORS as exc:
                logger.warning("presence heartbeat failed",
                               extra={"connection_id": self.id, "error": repr(exc)})

    def _parse(self, raw: str | bytes | object) -> Any:
        """A validated client message, or an error message dict explaining why not."""
        if not isinstance(raw, str):
            return error("bad_message", "send JSON text frames, not binary ones")
        try:
            return CLIENT_MESSAGE.validate_python(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return error("bad_message", "the message is not JSON")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            return error("bad_message", f"{where}: {first['msg']}" if where else first["msg"])

    async def _receive_loop(self) -> Verdict:
        client = self.client
        assert client is not None
        while True:
            raw = await self._receive()
            if raw is _DISCONNECTED:
                return None
            if isinstance(raw, str | bytes) and len(raw) > self.settings.max_message_bytes:
                return CloseCode.BAD_MESSAGE, "message too large"
            message = self._parse(raw)
            verdict: Verdict = None
            if isinstance(message, dict):
                verdict = self._bad(message)
            elif isinstance(message, PingMessage):
                client.control({"type": "pong"} if message.ref is None
                               else {"type": "pong", "ref": message.ref})
            elif isinstance(message, SubscribeMessage):
                verdict = await self._subscribe(message)
            elif isinstance(message, UnsubscribeMessage):
                await self._unsubscribe(message)
            elif isinstance(message, AuthMessage):
                verdict = await self._reauthenticate(message)
            if verdict is not None:
                return verdict

    def _bad(self, message: dict[str, Any]) -> Verdict:
        self.bad_messages += 1
        if self.bad_messages >= self.settings.max_abuse:
            return CloseCode.BAD_MESSAGE, f"too many bad messages: {message['detail']}"
        assert self.client is not None
        self.client.control(message)
        return None

    def _refuse(self, message: dict[str, Any]) -> Verdict:
        self.refused += 1
        if self.refused >= self.settings.max_abuse:
            return CloseCode.FORBIDDEN, f"too many refused subscriptions: {message['detail']}"
        assert self.client is not None
        self.client.control(message)
        return None

    async def _subscribe(self, message: SubscribeMessage) -> Verdict:
        client, principal = self.client, self.principal
        assert client is not None and principal is not None
        ref = message.ref
        channels: dict[str, Channel] = {}
        malformed: list[str] = []
        for raw in message.channels:
            try:
                ch = parse_channel(raw)
                channels[ch.name] = ch
            except ChannelError:
                malformed.append(raw)
        if malformed:
            return self._refuse(error(
                "bad_channel", "unknown or malformed channel; expected alerts, incidents, "
                "zone:<uuid>, stream:<asset uuid>/<metric>, transit:vehicles, zone:* or "
                "stream:*", channels=malformed, ref=ref))
        forbidden = [n for n, ch in channels.items() if ch.permission not in principal.permissions]
        if forbidden:
            perms = sorted({str(channels[n].permission) for n in forbidden})
            return self._refuse(error(
                "forbidden", f"your role lacks {', '.join(perms)} for these channels",
                channels=forbidden, ref=ref))
        last = None
        if message.last_event_id is not None:
            try:
                last = parse_id(message.last_event_id)
            except ValueError as exc:
                return self._bad(error("bad_last_event_id", str(exc), ref=ref))
        if len(client.subs.keys() | channels.keys()) > self.settings.max_channels:
            client.control(error("too_many_channels",
                                 f"at most {self.settings.max_channels} subscriptions",
                                 ref=ref))
            return None
        fresh = client.subscribe(list(channels.values()), last, ref=ref)
        zones = [channels[k].zone_id for k in fresh if channels[k].zone_id is not None]
        if zones:
            await self._watch([z for z in zones if z is not None])
        return None

    async def _watch(self, zone_ids: list[uuid.UUID]) -> None:
        principal = self.principal
        assert principal is not None
        watcher = presence.Watcher(connection_id=self.id, user_id=principal.id,
                                   role=principal.role, since=datetime.now(UTC))
        for zone_id in zone_ids:
            self.watching[zone_id] = watcher
        try:
            await presence.join(tenant_id=principal.tenant_id, zone_ids=zone_ids,
                                watcher=watcher)
        except (RedisError, OSError) as exc:
            logger.warning("presence not recorded", extra={"connection_id": self.id,
                                                          "error": repr(exc)})

    async def _unsubscribe(self, message: UnsubscribeMessage) -> None:
        client, principal = self.client, self.principal
        assert client is not None and principal is not None
        names: list[str] = []
        for raw in message.channels:
            with contextlib.suppress(ChannelError):
                names.append(parse_channel(raw).name)
        removed = client.unsubscribe(names, ref=message.ref)
        await self._unwatch([parse_channel(n).zone_id for n in removed])

    async def _unwatch(self, zone_ids: list[uuid.UUID | None]) -> None:
        principal = self.principal
        assert principal is not None
        for zone_id in zone_ids:
            watcher = self.watching.pop(zone_id, None) if zone_id is not None else None
            if watcher is None or zone_id is None:
                continue
            try:
                await presence.leave(tenant_id=principal.tenant_id, zone_ids=[zone_id],
                                     watcher=watcher)
            except REDIS_ERRORS as exc:
                logger.warning("presence not cleared; the entry will expire",
                               extra={"connection_id": self.id, "error": repr(exc)})

    async def _reauthenticate(self, message: AuthMessage) -> Verdict:
        """A fresh token extends the session; a changed role narrows the subscriptions."""
        verdict = await self._authenticate(message.token)
        if verdict is not None:
            return verdict
        client, principal = self.client, self.principal
        assert client is not None and principal is not None
        lost = client.set_permissions(principal.permissions)
        await self._unwatch([parse_channel(n).zone_id for n in lost])
        client.control(self._authenticated(message.ref))
        return None
