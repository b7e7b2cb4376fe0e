"""What the bridge needs from paho-mqtt beyond aiomqtt's API, kept in one place.

aiomqtt 2.5 wraps a paho-mqtt 2.2 `Client` as its private attribute `_client` and
drives it from the asyncio loop (paho's socket callbacks run in the loop's thread,
so calling paho from loop code is safe). Three things are reached through it:

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
  2.2; `fast_decode = false` in the bridge settings turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.client import MQTTErrorCode, MQTTMessage, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# (topic bytes, packet id, qos, dup, payload)
PublishHandler = Callable[[bytes, int, int, bool, bytes], None]

FAST_DECODE_SUPPORTED = paho.mqtt.__version__.startswith("2.")


def paho_client(client: aiomqtt.Client) -> PahoClient:
    return client._client


def enable_manual_ack(client: aiomqtt.Client) -> None:
    paho_client(client).manual_ack_set(True)


def ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    paho_client(client).ack(mid, qos)


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
        packet = paho._in_packet["packet"]
        header = paho._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2:
            return slow()
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
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            pos += props_len
            if pos > len(packet) or not topic:
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
        except IndexError:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        handler(topic, mid, qos, bool(header & 0x08), bytes(packet[pos:]))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # An instance attribute shadows the method paho's _packet_handle looks up.
    paho._handle_publish = handle_publish  # type: ignore[method-assign]
