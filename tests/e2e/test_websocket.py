"""The WebSocket as a dashboard uses it, against a real server (uvicorn) and real Redis.

Authentication and close codes, subscriptions and events published with `publish()`,
tenant isolation, role filtering, resume after a disconnect (no gap, no duplicate at
the seam), a slow consumer next to a fast one, frame coalescing, and presence.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from civitas_ray.cache import get_redis
from civitas_ray.config import get_settings
from civitas_ray.realtime.events import Event, publish, replay, stream_key
from civitas_ray.realtime.hub import get_hub
from civitas_ray.realtime.presence import presence_key
from tests.conftest import TenantFixture

pytestmark = pytest.mark.e2e

CONTROL = {"authenticated", "subscribed", "unsubscribed", "pong", "notice", "error"}


class Socket:
    """A thin client: flattens array frames into messages and counts frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: deque[dict[str, Any]] = deque()
        self.frames = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self.pending:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            self.frames += 1
            data = json.loads(raw)
            self.pending.extend(data if isinstance(data, list) else [data])
        return self.pending.popleft()

    async def expect(self, mtype: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message, which must be of this type."""
        message = await self.recv(timeout)
        assert message["type"] == mtype, message
        return message

    async def until(self, pred: Callable[[dict[str, Any]], bool],
                    timeout: float = 5.0) -> dict[str, Any]:
        """Skip messages until one matches."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if pred(message):
                return message

    async def events(self, n: int, timeout: float = 5.0, *,
                     types: set[str] | None = None) -> list[dict[str, Any]]:
        """The next `n` events (of these types), skipping control messages."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] not in CONTROL and (types is None or message["type"] in types):
                out.append(message)
        return out

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until nothing has for `seconds`."""
        out: list[dict[str, Any]] = []
        try:
            while True:
                out.append(await self.recv(seconds))
        except TimeoutError:
            return out

    async def subscribe(self, *channels: str, last_event_id: str | None = None,
                        ) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "channels": list(channels)}
        if last_event_id is not None:
            message["last_event_id"] = last_event_id
        await self.send(message)
        return await self.until(lambda m: m["type"] in {"subscribed", "error"})

    async def closed(self, timeout: float = 5.0) -> tuple[int, str]:
        """Read until the server closes; its close code and reason."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")


def _ws_url(base: str, token: str | None) -> str:
    url = base.replace("http://", "ws://") + "/ws"
    return f"{url}?token={token}" if token else url


@asynccontextmanager
async def connect(base: str, token: str | None = None, *, authenticated: bool = True,
                  **kwargs: Any) -> AsyncIterator[Socket]:
    async with websockets.connect(_ws_url(base, token), **kwargs) as ws:
        sock = Socket(ws)
        if token and authenticated:
            await sock.expect("authenticated")
        yield sock


@pytest.fixture
async def tenant(make_tenant: Callable[..., Awaitable[TenantFixture]],
                 ) -> AsyncIterator[Callable[..., Awaitable[TenantFixture]]]:
    """make_tenant, plus removal of the tenants' streams and presence keys afterwards."""
    made: list[TenantFixture] = []

    async def factory(**kwargs: Any) -> TenantFixture:
        t = await make_tenant(**kwargs)
        made.append(t)
        return t

    yield factory
    r = get_redis()
    for t in made:
        keys = [k async for k in r.scan_iter(f"civitas:{t.id}:*")]
        if keys:
            await r.delete(*keys)


def token(t: TenantFixture, role: str) -> str:
    return str(t.users[role]["access_token"])


def alerts(n: int, start: int = 0) -> list[Event]:
    return [Event("alert.fired", "alerts", {"n": start + i}) for i in range(n)]


# -- authentication --------------------------------------------------------------------

async def test_unauthenticated_sockets_are_closed(live_server: str, tenant: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    t = await tenant(roles=["viewer"])
    async with connect(live_server) as ws:  # no token: the first message must be auth
        await ws.send({"type": "subscribe", "channels": ["alerts"]})
        code, reason = await ws.closed()
        assert code == 4401 and "authenticate first" in reason
    async with connect(live_server, "not.a.jwt", authenticated=False) as ws:
        assert (await ws.closed())[0] == 4401
    forged = token(t, "viewer")[:-4] + "AAAA"
    async with connect(live_server, forged, authenticated=False) as ws:
        assert (await ws.closed())[0] == 4401
    async with connect(live_server) as ws:
        await ws.send({"type": "auth", "token": "garbage"})
        assert (await ws.closed())[0] == 4401

    monkeypatch.setattr(get_hub().settings, "auth_timeout_s", 0.3)
    async with connect(live_server) as ws:  # says nothing at all
        code, reason = await ws.closed()
        assert code == 4408 and "auth" in reason


async def test_device_api_keys_are_refused(live_server: str, tenant: Any) -> None:
    t = await tenant(roles=["operator"])
    assert t.api_key
    async with connect(live_server, t.api_key, authenticated=False) as ws:
        code, reason = await ws.closed()
        assert code == 4403 and "device API keys" in reason
    async with connect(live_server, additional_headers={"X-API-Key": t.api_key}) as ws:
        assert (await ws.closed())[0] == 4403
    async with connect(live_server) as ws:
        await ws.send({"type": "auth", "token": t.api_key})
        assert (await ws.closed())[0] == 4403


async def test_first_message_auth_and_token_expiry(live_server: str, tenant: Any) -> None:
    from civitas_ray.auth.security import create_access_token

    t = await tenant(roles=["viewer"])
    user_id = t.users["viewer"]["id"]
    short_settings = get_settings().auth.model_copy(update={"access_token_ttl_s": 2})
    short, _ = create_access_token(settings=short_settings, user_id=user_id, tenant_id=t.id,
                                   role="viewer")
    async with connect(live_server) as ws:
        await ws.send({"type": "auth", "token": token(t, "viewer"), "ref": 1})
        hello = await ws.expect("authenticated")
        assert hello["user_id"] == str(user_id) and hello["tenant_id"] == str(t.id)
        assert hello["ref"] == 1 and "telemetry:read" not in hello["permissions"]

    async with connect(live_server, short) as expiring, connect(live_server, short) as renewed:
        await renewed.send({"type": "auth", "token": token(t, "viewer")})
        await renewed.expect("authenticated")
        code, reason = await expiring.closed(timeout=6)
        assert code == 4401 and "expired" in reason
        await renewed.send({"type": "ping", "ref": "still-here"})
        assert await renewed.expect("pong") == {"type": "pong", "ref": "still-here"}


# -- subscriptions, events, isolation, roles -------------------------------------------

async def test_subscribe_and_receive_published_events(live_server: str, tenant: Any) -> None:
    t = await tenant(roles=["operator"])
    zone = uuid.uuid4()
    async with connect(live_server, token(t, "operator")) as ws:
        ack = await ws.subscribe("alerts", f"zone:{str(zone).upper()}", "incidents")
        assert ack["type"] == "subscribed"
        assert ack["channels"] == ["alerts", f"zone:{zone}", "incidents"]  # canonical ids
        await ws.quiet(0.2)  # our own presence.joined
        sent = [Event("alert.fired", "alerts", {"rule": "flood", "value": 3.5}),
                Event("zone.state", f"zone:{zone}", {"occupancy": 0.7}),
                Event("incident.opened", "incidents", {"number": 7}),
                Event("telemetry.rollup", f"stream:{uuid.uuid4()}/flow", {"mean": 1.0})]
        ids = await publish(t.id, sent)
        got = await ws.events(3)
        assert [(m["id"], m["type"], m["channel"], m["data"]) for m in got] == [
            (ids[0], "alert.fired", "alerts", {"rule": "flood", "value": 3.5}),
            (ids[1], "zone.state", f"zone:{zone}", {"occupancy": 0.7}),
            (ids[2], "incident.opened", "incidents", {"number": 7})]
        assert await ws.quiet(0.2) == []  # not subscribed to the stream channel

        await ws.send({"type": "unsubscribe", "channels": ["alerts"], "ref": "u"})
        gone = await ws.expect("unsubscribed")
        assert gone["channels"] == ["alerts"] and "alerts" not in gone["subscriptions"]
        await publish(t.id, [*alerts(2), Event("incident.updated", "incidents", {})])
        assert [m["type"] for m in await ws.events(1)] == ["incident.updated"]


async def test_tenant_isolation(live_server: str, tenant: Any) -> None:
    a, b = await tenant(roles=["operator"]), await tenant(roles=["operator"])
    zone = uuid.uuid4()  # the same channel names in both tenants
    async with connect(live_server, token(a, "operator")) as wa, \
            connect(live_server, token(b, "operator")) as wb:
        for ws in (wa, wb):
            await ws.subscribe("alerts", f"zone:{zone}")
        await wa.quiet(0.2)
        await wb.quiet(0.2)
        await publish(a.id, [*alerts(5), Event("zone.state", f"zone:{zone}", {"t": "a"})])
        assert len(await wa.events(6)) == 6
        marker = await publish(b.id, [Event("alert.fired", "alerts", {"t": "b"})])
        first = (await wb.events(1))[0]
        assert first["id"] == marker[0] and first["data"] == {"t": "b"}

    # A replay reads only the principal's own stream too.
    async with connect(live_server, token(b, "operator")) as wb:
        await wb.subscribe("alerts", last_event_id="0-0")
        got = await wb.events(1)
        assert got[0]["id"] == marker[0]
        done = await wb.until(lambda m: m.get("code") == "replayed")
        assert done["count"] == 1


async def test_role_filtering(live_server: str, tenant: Any) -> None:
    t = await tenant(roles=["viewer", "analyst"])
    stream = f"stream:{uuid.uuid4()}/flow"
    async with connect(live_server, token(t, "viewer")) as viewer, \
            connect(live_server, token(t, "analyst")) as analyst:
        refused = await viewer.subscribe(stream, "alerts")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert refused["channels"] == [stream] and "telemetry:read" in refused["detail"]
        bad = await viewer.subscribe("zone:not-a-uuid")
        assert bad["code"] == "bad_channel" and bad["channels"] == ["zone:not-a-uuid"]
        assert (await viewer.subscribe("zone:*", "alerts"))["subscriptions"] == [
            "alerts", "zone:*"]
        assert (await analyst.subscribe(stream, "stream:*"))["type"] == "subscribed"

        zone = f"zone:{uuid.uuid4()}"
        ids = await publish(t.id, [Event("telemetry.rollup", stream, {"mean": 2.0}),
                                   Event("zone.state", zone, {"ok": True})])
        assert [m["id"] for m in await analyst.events(1)] == [ids[0]]
        assert [m["id"] for m in await viewer.events(1)] == [ids[1]]
        assert await analyst.quiet(0.2) == []

        # Repeated abuse ends the connection: the fifth refusal closes it.
        for _ in range(2):
            assert (await viewer.subscribe(stream))["code"] == "forbidden"
        await viewer.send({"type": "subscribe", "channels": [stream]})
        code, reason = await viewer.closed()
        assert code == 4403 and "refused" in reason


async def test_bad_messages(live_server: str, tenant: Any) -> None:
    t = await tenant(roles=["viewer"])
    async with connect(live_server, token(t, "viewer")) as ws:
        await ws.ws.send("{not json")
        assert (await ws.expect("error"))["code"] == "bad_message"
        await ws.ws.send(b"\x00binary")
        assert (await ws.expect("error"))["code"] == "bad_message"
        await ws.send({"type": "shout"})
        assert (await ws.expect("error"))["code"] == "bad_message"
        assert (await ws.subscribe("alerts", last_event_id="yesterday"))["code"] == \
            "bad_last_event_id"
        await ws.send({"type": "ping"})
        assert await ws.expect("pong") == {"type": "pong"}
        await ws.send({"type": "subscribe", "channels": []})
        code, _ = await ws.closed()
        assert code == 4400
    async with connect(live_server, token(t, "viewer")) as ws:
        await ws.ws.send("x" * 100_000)
        assert await ws.closed() == (4400, "message too large")


# -- resume ------------------------------------------------------------------------------

async def test_resume_after_disconnect_has_no_gap_and_no_duplicate(live_server: str,
                                                                   tenant: Any) -> None:
    t = await tenant(roles=["operator"])
    async with connect(live_server, token(t, "operator")) as ws:
        await ws.subscribe("alerts")
        await publish(t.id, alerts(3))
        seen = await ws.events(3)
    last = seen[-1]["id"]

    missed = await publish(t.id, [*alerts(40, start=3), Event("incident.opened", "incidents", {}),
                                  *alerts(10, start=43)])
    missed_alerts = missed[:40] + missed[41:]  # not the incident

    # Keep publishing while reconnecting, so the replay/live seam is crossed under load.
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 100
        while not stop.is_set():
            await publish(t.id, alerts(7, start=n))
            n += 7
            await asyncio.sleep(0.002)

    task = asyncio.create_task(publisher())
    try:
        async with connect(live_server, token(t, "operator")) as ws:
            ack = await ws.subscribe("alerts", last_event_id=last)
            assert ack["type"] == "subscribed"
            await asyncio.sleep(0.3)
            stop.set()
            await task
            expected = [e.id for e in await replay(t.id, last, channels=["alerts"],
                                                   limit=100_000)]
            got = [m["id"] for m in await ws.events(len(expected), timeout=10)]
            assert got == expected  # in order, complete, no duplicate
            assert got[: len(missed_alerts)] == missed_alerts
            assert await ws.quiet(0.3) == []
    finally:
        stop.set()
        await task


async def test_resume_from_trimmed_history_says_truncated(live_server: str,
                                                          tenant: Any) -> None:
    t = await tenant(roles=["operator"])
    old = await publish(t.id, alerts(5))
    await get_redis().xtrim(stream_key(t.id), maxlen=2, approximate=False)
    async with connect(live_server, token(t, "operator")) as ws:
        await ws.subscribe("alerts", last_event_id=old[0])
        notice = await ws.expect("notice")
        assert notice["code"] == "truncated" and notice["first_id"] == old[3]
        assert [m["id"] for m in await ws.events(2)] == old[3:]


# -- slow consumers and frames -----------------------------------------------------------

def _slow_socket(base: str) -> socket.socket:
    """A client socket with a tiny receive window: with `max_queue=1` it stops reading
    after a frame or two, the way a stalled browser tab does."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def _bulky(n: int, start: int = 0) -> list[Event]:
    # Random text per event, so permessage-deflate cannot shrink the volume away.
    return [Event("alert.fired", "alerts", {"n": start + i, "pad": secrets.token_urlsafe(750)})
            for i in range(n)]


async def test_slow_consumer_does_not_delay_a_fast_one(live_server: str, tenant: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_hub().settings, "client_queue", 400)  # a small test volume
    t = await tenant(roles=["operator"])
    zone = f"zone:{uuid.uuid4()}"
    tok = token(t, "operator")
    async with connect(live_server, tok) as fast, \
            connect(live_server, tok, sock=_slow_socket(live_server), max_queue=1) as slow:
        for ws in (fast, slow):
            await ws.subscribe("alerts", zone)
        await fast.quiet(0.2)

        received: list[tuple[str, float]] = []
        states: list[int] = []

        async def read_fast() -> None:
            while True:
                m = await fast.recv(30)
                if m["type"] == "alert.fired":
                    received.append((m["id"], time.monotonic()))
                elif m["type"] == "zone.state":
                    states.append(m["data"]["seq"])

        reader = asyncio.create_task(read_fast())
        published: list[str] = []
        started = time.monotonic()
        for batch in range(30):
            ids = await publish(t.id, [*_bulky(100, batch * 100),
                                       Event("zone.state", zone, {"seq": batch})])
            published += ids[:100]
        finished = time.monotonic()
        while len(received) < len(published) and time.monotonic() - finished < 5:
            await asyncio.sleep(0.01)
        reader.cancel()
        assert [i for i, _ in received] == published
        assert received[-1][1] - finished < 1.0, "the fast client lagged behind"
        assert states[-1] == 29
        fast_frames = fast.frames
        assert fast_frames < len(published) / 10, "events were not coalesced into frames"

        # Now the slow one reads: it was never closed, got the newest zone state, and a
        # dropped notice tells it exactly what it missed.
        messages = await slow.quiet(1.0)
        got = [m["id"] for m in messages if m["type"] == "alert.fired"]
        notices = [m for m in messages if m.get("code") == "dropped"]
        zone_states = [m["data"]["seq"] for m in messages if m["type"] == "zone.state"]
        assert notices and sum(n["count"] for n in notices) == len(published) - len(got)
        assert zone_states[-1] == 29 and len(zone_states) < 30  # coalesced, newest kept
        assert got == sorted(got, key=lambda i: tuple(map(int, i.split("-"))))

        # Resuming from the notice fills exactly the gap(s): everything, once.
        await slow.send({"type": "subscribe", "channels": ["alerts"],
                         "last_event_id": notices[0]["last_event_id"]})
        refill: list[str] = []
        while (m := await slow.recv(10)).get("code") != "replayed":
            if m["type"] == "alert.fired":
                refill.append(m["id"])
        assert m["count"] == len(refill) == len(published) - len(got)
        assert sorted(got + refill) == sorted(published)
        assert time.monotonic() - started < 20


async def test_hopelessly_slow_client_is_closed_4008(live_server: str, tenant: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_hub().settings, "client_queue", 50)
    monkeypatch.setattr(get_hub().settings, "slow_close_after_s", 0.3)
    t = await tenant(roles=["operator"])
    async with connect(live_server, token(t, "operator"), sock=_slow_socket(live_server),
                       max_queue=1) as slow:
        await slow.subscribe("alerts")
        for batch in range(12):  # its socket stays stuck for longer than 0.3 s
            await publish(t.id, _bulky(100, batch * 100))
            await asyncio.sleep(0.1)
        code, reason = await slow.closed(timeout=5)
        assert code == 4008 and "too slow" in reason


async def test_burst_is_coalesced_into_few_frames(live_server: str, tenant: Any) -> None:
    t = await tenant(roles=["operator"])
    async with connect(live_server, token(t, "operator")) as ws:
        await ws.subscribe("alerts")
        frames_before = ws.frames
        ids = await publish(t.id, alerts(1_000))
        got = await ws.events(1_000)
        assert [m["id"] for m in got] == ids
        assert ws.frames - frames_before <= 50


# -- presence ------------------------------------------------------------------------------

async def test_presence_joined_left_and_route(live_server: str, tenant: Any,
                                              client: httpx.AsyncClient) -> None:
    t = await tenant(roles=["operator", "viewer"])
    other = await tenant(roles=["viewer"])
    zone = uuid.uuid4()
    channel = f"zone:{zone}"
    operator_id, viewer_id = (str(t.users[r]["id"]) for r in ("operator", "viewer"))

    async def watchers(fx: TenantFixture = t) -> dict[str, int]:
        r = await client.get("/api/v1/presence", params={"zone_id": str(zone)},
                             headers=fx.headers("viewer"))
        assert r.status_code == 200, r.text
        return {w["user_id"]: w["connections"] for w in r.json()["watchers"]}

    def presence(kind: str, user: str) -> Callable[[dict[str, Any]], bool]:
        return lambda m: m["type"] == f"presence.{kind}" and m["data"]["user_id"] == user

    async with connect(live_server, token(t, "operator")) as op:
        await op.subscribe(channel)
        await op.until(presence("joined", operator_id))
        async with connect(live_server, token(t, "viewer")) as v1, \
                connect(live_server, token(t, "viewer")) as v2:
            await v1.subscribe(channel)
            joined = await op.until(presence("joined", viewer_id))
            assert joined["channel"] == channel and joined["data"]["role"] == "viewer"
            await v2.subscribe(channel)
            await op.until(presence("joined", viewer_id))
            assert await watchers() == {operator_id: 1, viewer_id: 2}
            assert await watchers(other) == {}  # another tenant, the same zone id

            await v1.send({"type": "unsubscribe", "channels": [channel]})
            left = await op.until(presence("left", viewer_id))
            assert left["data"]["connection_id"] == joined["data"]["connection_id"]
            assert await watchers() == {operator_id: 1, viewer_id: 1}
        await op.until(presence("left", viewer_id))  # v2 disconnected
        assert await watchers() == {operator_id: 1}

        # A watcher whose server died stops heartbeating: it expires and is announced.
        ghost = str(uuid.uuid4())
        await get_redis().hset(presence_key(t.id, zone), "dead-connection", json.dumps(
            {"user_id": ghost, "role": "viewer", "since": "2024-01-01T00:00:00+00:00",
             "expires": time.time() - 1}))
        assert await watchers() == {operator_id: 1}
        gone = await op.until(presence("left", ghost))
        assert gone["data"]["reason"] == "expired"

    r = await client.get("/api/v1/presence", headers=t.headers("viewer"))
    assert r.status_code == 422
    r = await client.get("/api/v1/presence", params={"zone_id": str(zone)},
                         headers=t.device_headers)
    assert r.status_code == 403
