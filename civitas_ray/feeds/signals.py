"""Traffic signal controllers: one JSON message per controller tick, mapped to readings.

The message (HTTP `POST /api/v1/feeds/signals`, MQTT `civitas/{tenant}/signals/{controller}`):

    {"controller_id": "SC-0042", "ts": "2026-05-01T08:00:00Z", "mode": "actuated",
     "stage": 3, "cycle_s": 90,
     "groups": [{"id": "1", "state": "green"}, {"id": "2", "state": "red"}],
     "detectors": [{"id": "D1", "count": 12, "occupancy": 35.0, "speed": 42.0}]}

becomes readings of the controller asset (by UUID or `external_id`), all at `ts`:

    sg.<id>.state     signal group state code (STATE_CODES: dark 0, red 1, red_amber 2,
                      green 3, amber 4, flashing_amber 5, flashing_red 6)
    stage, cycle_s    the running stage (phase) number and cycle length, when sent
    mode              MODE_CODES: off 0, fixed 1, actuated 2, adaptive 3, manual 4, flash 5
    det.<id>.count / .occupancy / .speed   per detector, when sent
    vehicle_count     the sum of the detector counts (what the traffic API reads as flow)
    occupancy, speed  the mean over the detectors that sent them

A message that does not validate is refused whole, with the reasons; none of it is stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from civitas_ray.telemetry.parse import ParsedReadings, PayloadError, parse_readings

STATE_CODES: dict[str, int] = {"dark": 0, "red": 1, "red_amber": 2, "green": 3, "amber": 4,
                               "flashing_amber": 5, "flashing_red": 6}
MODE_CODES: dict[str, int] = {"off": 0, "fixed": 1, "actuated": 2, "adaptive": 3,
                              "manual": 4, "flash": 5}

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,24}$")]
State = Literal["dark", "red", "red_amber", "green", "amber", "flashing_amber", "flashing_red"]
Mode = Literal["off", "fixed", "actuated", "adaptive", "manual", "flash"]


class SignalGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Ident
    state: State


class Detector(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: Ident
    count: int | None = Field(None, ge=0, le=100_000)
    occupancy: float | None = Field(None, ge=0, le=100, description="Percent of time occupied")
    speed: float | None = Field(None, ge=0, le=400, description="km/h")


class SignalMessage(BaseModel):
    """One controller tick (see the module docstring for the mapping)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    controller_id: str | None = Field(None, min_length=1, max_length=128,
                                      description="Asset UUID or external_id; on MQTT the "
                                                  "topic's controller when left out")
    ts: datetime | float
    mode: Mode | None = None
    stage: int | None = Field(None, ge=0, le=255)
    cycle_s: float | None = Field(None, gt=0, le=3600)
    groups: list[SignalGroup] = Field(default_factory=list, max_length=64)
    detectors: list[Detector] = Field(default_factory=list, max_length=128)


def readings(msg: SignalMessage, controller: str) -> list[dict[str, Any]]:
    """The mapped readings of one message (dicts for `parse_readings`)."""
    ts: Any = msg.ts.isoformat() if isinstance(msg.ts, datetime) else msg.ts
    out: list[dict[str, Any]] = []

    def add(metric: str, value: float) -> None:
        out.append({"asset_id": controller, "metric": metric, "ts": ts, "value": value})

    if msg.mode is not None:
        add("mode", MODE_CODES[msg.mode])
    if msg.stage is not None:
        add("stage", msg.stage)
    if msg.cycle_s is not None:
        add("cycle_s", msg.cycle_s)
    for g in msg.groups:
        add(f"sg.{g.id}.state", STATE_CODES[g.state])
    counts, occ, speed = [], [], []
    for d in msg.detectors:
        if d.count is not None:
            add(f"det.{d.id}.count", d.count)
            counts.append(d.count)
        if d.occupancy is not None:
            add(f"det.{d.id}.occupancy", d.occupancy)
            occ.append(d.occupancy)
        if d.speed is not None:
            add(f"det.{d.id}.speed", d.speed)
            speed.append(d.speed)
    if counts:
        add("vehicle_count", sum(counts))
    if occ:
        add("occupancy", sum(occ) / len(occ))
    if speed:
        add("speed", sum(speed) / len(speed))
    return out


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                     for e in exc.errors()[:10])


def parse_signal_message(payload: bytes | str | dict[str, Any], *,
                         default_controller: str | None = None) -> ParsedReadings:
    """Readings of one controller message; PayloadError (nothing kept) when it is invalid."""
    try:
        doc = orjson.loads(payload) if isinstance(payload, bytes | str) else payload
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the message is not JSON: {exc}") from exc
    try:
        msg = SignalMessage.model_validate(doc)
    except ValidationError as exc:
        raise PayloadError(f"invalid signal controller message: {_reasons(exc)}") from exc
    controller = msg.controller_id or default_controller
    if controller is None:
        raise PayloadError("controller_id is missing")
    if default_controller is not None and controller != default_controller:
        raise PayloadError(f"this topic carries controller {default_controller!r} only")
    docs = readings(msg, controller)
    if not docs:
        raise PayloadError("the message carries no state, stage, mode or detector data")
    parsed = parse_readings(docs, max_readings=len(docs))
    if parsed.rejected:
        raise PayloadError("invalid signal controller message: " + "; ".join(
            r for _, r in parsed.rejected[:5]))
    return parsed
