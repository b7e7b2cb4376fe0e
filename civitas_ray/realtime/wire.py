"""Stream entries turned into ready-to-send WebSocket messages, once per event.

The hub reads an event once per tenant and fans it out to many clients, so the JSON
of the message is built here once and shared: a client's frame is then only a join
of strings, and the event's `data` is never parsed and re-serialised per client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from civitas_ray.realtime.channels import Channel, coalesce_key, parse_channel
from civitas_ray.realtime.events import StreamId, decode_fields, parse_id


@dataclass(frozen=True, slots=True)
class WireEvent:
    id: str
    sid: StreamId
    type: str
    channel: Channel
    message: str  # {"type","channel","id","data"} as JSON text
    coalesce: str | None  # see channels.coalesce_key

    @property
    def size(self) -> int:
        return len(self.message)


def from_entry(entry_id: str, fields: Mapping[Any, Any]) -> WireEvent:
    """Build the shared message of one stream entry; ValueError if the entry is malformed."""
    etype, name, data = decode_fields(fields)
    channel = parse_channel(name, allow_wildcard=False)
    message = (f'{{"type":{orjson.dumps(etype).decode()},"channel":'
               f'{orjson.dumps(channel.name).decode()},"id":"{entry_id}","data":{data}}}')
    return WireEvent(id=entry_id, sid=parse_id(entry_id), type=etype, channel=channel,
                     message=message, coalesce=coalesce_key(channel, etype))


def frame(messages: list[str]) -> str:
    """One WebSocket text frame: a single message object, or an array of several."""
    return messages[0] if len(messages) == 1 else "[" + ",".join(messages) + "]"
