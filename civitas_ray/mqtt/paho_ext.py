"""What the bridge needs from paho-mqtt beyond aiomqtt's API, kept in one place.

aiomqtt 2.5 wraps a paho-mqtt 2.2 `Client` as its private attribute `_client` and
drives it from the asyncio loop (paho's socket callbacks run in the loop's thread,
so calling paho from loop code is safe). These things are reached through it:

- manual acknowledgement: `manual_ack_set(True)` makes paho's `_handle_publish`
  skip its automatic PUBACK for QoS 1; `ack(mid, qos)` sends it later
  (paho/mqtt/client.py, `Client.ack` and `Client.manual_ack_set`);
- a fire-and-forget QoS 0 publish from a callback (rejection reports);
- a DISCONNECT that ends the session (Session Expiry Interval 0), which aiomqtt's
  context manager cannot send;
- optionally, a lean decoder for incoming PUBLISH packets. Profiling the bridge at
  5 k msg/s showed paho spending about half of the process's CPU per message in
  `decode_publish` (a fresh `Properties` object with two 40-entry tables, an
  `MQTTMessage` with a `threading.Condition`, the topic matcher, debug logging).
  The lean path reads topic, packet id, flags and payload straight from the packet
  paho has just read (`_in_packet`) and skips the properties, which the bridge does
  not use (it announces no Topic Alias Maximum, so the broker sends no aliases).
  QoS 2 and MQTT 3 packets go through paho's own path. Checked against paho-mqtt
  2.2; `fast_decode = false` in the bridge settings turns it off;
- with the lean decoder, lean reads (`_LeanReader`): paho reads a packet with three
  or four `recv` calls (the command byte, the length byte by byte, the rest) and
  one packet per event-loop wake-up, which a profile at 20 k msg/s showed as the
  largest cost left. The reader takes 64 KiB per `recv` and decodes the PUBLISH
  packets in it itself; every other packet still goes through paho's own reading
  and handling (plain TCP sockets only; TLS and websockets are left to paho);
- PUBACKs in bulk: paho sends each queued packet with its own `send` call, so the
  PUBACKs released by one commit go out as one queued write (`ack_many`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt
import paho.mqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.client import MQTTErrorCode, MQTTMessage, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# (topic bytes, packet id, qos, dup, payload)
PublishParts = tuple[bytes, int, int, bool, bytes]
PublishHandler = Callable[[bytes, int, int, bool, bytes], None]

FAST_DECODE_SUPPORTED = paho.mqtt.__version__.startswith("2.")


def paho_client(client: aiomqtt.Client) -> PahoClient:
    return client._client


def enable_manual_ack(client: aiomqtt.Client) -> None:
    paho_client(client).manual_ack_set(True)


def ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    paho_client(client).ack(mid, qos)


def ack_many(client: aiomqtt.Client, deliveries: Sequence[tuple[int, int]]) -> None:
    """Acknowledge (packet id, qos) pairs in this order, QoS 1 PUBACKs as one write.

    The PUBACKs are the bytes paho's `ack` would queue one by one (`_send_puback`:
    0x40, remaining length 2, packet id); queued as one packet they cost one `send`.
    QoS 2 goes through paho's `ack` (it keeps state for the exchange).
    """
    paho = paho_client(client)
    run: list[int] = []
    for mid, qos in deliveries:
        if qos == 1:
            run.append(0x4002_0000 | mid)
            continue
        _queue_pubacks(paho, run)
        run = []
        paho.ack(mid, qos)
    _queue_pubacks(paho, run)


def _queue_pubacks(paho: PahoClient, words: list[int]) -> None:
    if words:
        packet = struct.pack(f">{len(words)}I", *words)
        paho._packet_queue(PacketTypes.PUBACK << 4, packet, 0, 0)


def publish_nowait(client: aiomqtt.Client, topic: str, payload: bytes) -> None:
    """QoS 0, queued on the socket without waiting (aiomqtt's publish is a coroutine)."""
    paho_client(client).publish(topic, payload, qos=0)


async def end_session(client: aiomqtt.Client, *, timeout_s: float = 5.0) -> None:
    """Disconnect with Session Expiry Interval 0: the broker forgets the session, its
    subscriptions and anything still queued for it. Leaving the client's context
    afterwards is a no-op (aiomqtt sees the connection closed)."""
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    paho_client(client).disconnect(properties=props)
    with contextlib.suppress(TimeoutError, Exception):
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(client._disconnected)


def decode_publish(header: int, packet: bytes | bytearray) -> PublishParts | None:
    """(topic, packet id, qos, dup, payload) of an MQTT v5 PUBLISH (QoS 0 or 1) from its
    fixed-header byte and the rest of the packet; None when it is malformed.

    The properties are skipped: the bridge announces no Topic Alias Maximum, so the
    broker sends no aliases, and it uses no other property.
    """
    qos = (header & 0x06) >> 1
    try:
        pos = 2 + int.from_bytes(packet[0:2], "big")
        topic = bytes(packet[2:pos])
        mid = 0
        if qos:
            mid = int.from_bytes(packet[pos:pos + 2], "big")
            pos += 2
        props_len, shift = 0, 0
        while True:  # a Variable Byte Integer: the length of the properties
            byte = packet[pos]
            pos += 1
            props_len |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 21:
                return None
        pos += props_len
    except IndexError:
        return None
    if pos > len(packet) or not topic:
        return None
    return topic, mid, qos, bool(header & 0x08), bytes(packet[pos:])


class _LeanReader:
    """paho's `loop_read` and `_sock_recv` for a plain TCP socket: one 64 KiB `recv`
    per wake-up, PUBLISH packets decoded straight from that buffer.

    paho reads a packet with three or four `recv` calls (command byte, length byte
    by byte, the rest) and one packet per event-loop wake-up. Here complete QoS 0/1
    PUBLISH packets go from the buffer to the handler; anything else (CONNACK,
    SUBACK, PINGRESP, QoS 2, a packet cut at the buffer's end) goes through paho's
    own `loop_read`, whose `_sock_recv` is served from the same buffer, so paho's
    packet state stays its own. At most one `recv` per wake-up: a busy socket must
    not keep the loop from committing and acknowledging.
    """

    __slots__ = ("budget", "data", "handler", "paho", "pos", "raw_loop_read", "raw_recv",
                 "sock")
    CHUNK = 1 << 16

    def __init__(self, paho: PahoClient, handler: PublishHandler) -> None:
        self.paho = paho
        self.handler = handler
        self.raw_recv = paho._sock_recv
        self.raw_loop_read = paho.loop_read
        self.sock: object = None
        self.data = b""
        self.pos = 0
        self.budget = 0  # socket reads left in this wake-up

    def _same_socket(self) -> bool:
        sock = self.paho._sock
        if sock is not self.sock:  # a new connection: nothing buffered belongs to it
            self.sock, self.data, self.pos = sock, b"", 0
        return type(sock) is socket.socket

    def recv(self, bufsize: int) -> bytes:
        if not self._same_socket():
            return self.raw_recv(bufsize)
        if self.pos >= len(self.data):
            if self.budget <= 0:
                raise BlockingIOError  # paho keeps its partial packet for the next wake-up
            self.budget -= 1
            data = self.raw_recv(self.CHUNK)  # BlockingIOError, OSError: as paho's own
            if len(data) <= bufsize:
                return data
            self.data, self.pos = data, 0
        start, self.pos = self.pos, min(self.pos + bufsize, len(self.data))
        return self.data[start:self.pos]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        paho = self.paho
        if not self._same_socket():
            return self.raw_loop_read(max_packets)
        self.budget = 1
        while True:
            if paho._in_packet["command"] == 0 and self._take_publishes():
                with paho._msgtime_mutex:  # what paho's keep-alive check looks at
                    paho._last_bytes_received = time.monotonic()
            if self.pos >= len(self.data) and self.budget <= 0:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            # Each call takes at least one byte, or the one socket read: this ends.
            rc = self.raw_loop_read(max_packets)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or paho._sock is not self.sock:
                return rc

    def _take_publishes(self) -> int:
        """Hand over the complete QoS 0/1 PUBLISH packets at the buffer's head."""
        data, pos, end = self.data, self.pos, len(self.data)
        handler = self.handler
        taken = 0
        while pos + 2 <= end:
            header = data[pos]
            if header & 0xF0 != 0x30 or header & 0x06 > 0x02:
                break  # not a PUBLISH, or QoS 2 (or the reserved 3): paho's
            length, shift, i = 0, 0, pos + 1
            while i < end and shift <= 21:
                byte = data[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            else:
                break  # the length is cut off here, or malformed: paho decides
            if i + length > end:
                break
            parts = decode_publish(header, data[i:i + length])
            if parts is None:
                break  # malformed: paho's path refuses it and drops the connection
            handler(*parts)
            pos = i + length
            taken += 1
        self.pos = pos
        return taken


def route_publishes(client: aiomqtt.Client, handler: PublishHandler, *, fast: bool) -> None:
    """Every incoming PUBLISH goes to `handler`, bypassing aiomqtt's message queue."""
    paho = paho_client(client)

    def on_message(_c: Any, _u: Any, msg: MQTTMessage) -> None:
        handler(msg._topic, msg.mid, msg.qos, bool(msg.dup), bytes(msg.payload))

    paho.on_message = on_message
    if not (fast and FAST_DECODE_SUPPORTED and paho.protocol == MQTTProtocolVersion.MQTTv5):
        return
    slow = paho._handle_publish

    def handle_publish() -> MQTTErrorCode:
        header = paho._in_packet["command"]
        if header & 0x06 > 0x02:
            return slow()
        parts = decode_publish(header, paho._in_packet["packet"])
        if parts is None:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        handler(*parts)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # Instance attributes shadow the methods paho (and aiomqtt's reader) look up.
    paho._handle_publish = handle_publish  # type: ignore[method-assign]
    reader = _LeanReader(paho, handler)
    paho._sock_recv = reader.recv  # type: ignore[method-assign]
    paho.loop_read = reader.loop_read  # type: ignore[method-assign]
