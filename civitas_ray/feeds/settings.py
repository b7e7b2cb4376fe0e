"""Settings of the city feeds (`feeds.*`, env `CIVITAS_FEEDS__...`), kept apart from config.py."""

from __future__ import annotations

from pydantic import BaseModel, Field, HttpUrl


class WeatherFeedSettings(BaseModel):
    """An HTTP JSON weather source polled into one `weather_station` asset's readings.

    `records` is the dotted path to the list of observations in the document (empty: the
    document is one observation, or a list of them); `fields` maps an observation's keys
    (dotted paths) to metric names; `ts_field` holds the observation time (ISO 8601, or a
    date taken as midnight UTC, or epoch seconds).
    """

    url: HttpUrl | None = None  # unset: no poller
    tenant: str = ""  # tenant slug
    station: str = ""  # the weather_station asset: UUID or external_id
    records: str = ""
    ts_field: str = "ts"
    fields: dict[str, str] = Field(default_factory=dict)
    interval_s: float = Field(600.0, ge=1.0)
    timeout_s: float = Field(10.0, gt=0)
    max_backoff_s: float = Field(3600.0, ge=1.0)
    headers: dict[str, str] = Field(default_factory=dict)


class FeedsSettings(BaseModel):
    weather: WeatherFeedSettings = WeatherFeedSettings()
