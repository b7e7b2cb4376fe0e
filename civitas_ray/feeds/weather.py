"""Weather: an HTTP JSON source polled into a `weather_station` asset's readings.

`WeatherPoller` (pure async, no Ray) fetches the configured URL with `If-None-Match`
(an unchanged document, 304, costs nothing), maps each observation's fields to metrics
(`feeds.weather.fields`), and ingests them through the telemetry path like any device.
Failures back off exponentially up to `max_backoff_s`; the loop logs and keeps going.
`WeatherPollerActor` is the Ray shell `civitas up` can start; it persists nothing (the
readings are in PostgreSQL; de-duplication makes a re-poll after a restart harmless).
Stations that publish over MQTT use the generic telemetry topic
(`civitas/{tenant}/telemetry/{station}`) and need no adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, date, datetime
from typing import Any

import httpx
import ray

from civitas_ray.feeds.settings import WeatherFeedSettings
from civitas_ray.telemetry.ingest import Ingestor, IngestOutcome
from civitas_ray.telemetry.parse import PayloadError, parse_readings

log = logging.getLogger(__name__)


def _dig(doc: Any, path: str) -> Any:
    for key in [p for p in path.split(".") if p]:
        if isinstance(doc, dict):
            doc = doc.get(key)
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            return None
    return doc


def _ts(raw: Any) -> Any:
    """A date alone (daily observations) is midnight UTC; anything else goes as sent."""
    if isinstance(raw, str) and len(raw) == 10:
        try:
            return datetime.combine(date.fromisoformat(raw), datetime.min.time(),
                                    tzinfo=UTC).isoformat()
        except ValueError:
            return raw
    return raw


def map_observations(doc: Any, cfg: WeatherFeedSettings) -> list[dict[str, Any]]:
    """Readings of the station from a fetched document (missing or null fields skipped)."""
    if not cfg.fields:
        raise PayloadError("feeds.weather.fields maps no field to a metric")
    records = _dig(doc, cfg.records) if cfg.records else doc
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise PayloadError(f"no list of observations at {cfg.records or 'the top'!r}")
    out: list[dict[str, Any]] = []
    for rec in records:
        ts = _ts(_dig(rec, cfg.ts_field))
        for path, metric in cfg.fields.items():
            value = _dig(rec, path)
            if value is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out.append({"asset_id": cfg.station, "metric": metric, "ts": ts, "value": value})
    return out


class WeatherPoller:
    """Polls one source; `poll_once` is one fetch + ingest, `run` the loop with back-off."""

    def __init__(self, cfg: WeatherFeedSettings, *, tenant_id: uuid.UUID,
                 ingestor: Ingestor) -> None:
        if cfg.url is None or not cfg.station:
            raise ValueError("feeds.weather needs url and station")
        self.cfg, self.tenant_id, self.ingestor = cfg, tenant_id, ingestor
        self.etag: str | None = None
        self.failures = 0
        self.stats = {"polls": 0, "not_modified": 0, "accepted": 0, "rejected": 0,
                      "errors": 0}

    async def poll_once(self, client: httpx.AsyncClient) -> IngestOutcome | None:
        """None when the source says nothing changed (304)."""
        headers = dict(self.cfg.headers)
        if self.etag:
            headers["If-None-Match"] = self.etag
        r = await client.get(str(self.cfg.url), headers=headers, timeout=self.cfg.timeout_s)
        self.stats["polls"] += 1
        if r.status_code == 304:
            self.stats["not_modified"] += 1
            return None
        r.raise_for_status()
        docs = map_observations(r.json(), self.cfg)
        parsed = parse_readings(docs, max_readings=max(len(docs), 1))
        outcome = await self.ingestor.ingest(tenant_id=self.tenant_id, parsed=parsed)
        self.etag = r.headers.get("etag") or self.etag  # only once the data is stored
        self.stats["accepted"] += outcome.accepted
        self.stats["rejected"] += len(outcome.rejected)
        if outcome.rejected:
            log.warning("weather readings rejected", extra={
                "url": str(self.cfg.url), "rejected": len(outcome.rejected),
                "first": outcome.rejected[0][1]})
        return outcome

    def delay(self) -> float:
        """The wait before the next poll: the interval, doubled per failure in a row."""
        if not self.failures:
            return self.cfg.interval_s
        return min(self.cfg.interval_s * 2 ** min(self.failures, 20), self.cfg.max_backoff_s)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(follow_redirects=True) as client:
            while not stop.is_set():
                try:
                    await self.poll_once(client)
                    self.failures = 0
                except Exception as exc:  # the loop must outlive a bad source
                    self.failures += 1
                    self.stats["errors"] += 1
                    log.warning("weather poll failed", extra={
                        "url": str(self.cfg.url), "failures": self.failures,
                        "error": f"{type(exc).__name__}: {exc}"[:300]})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.delay())


async def tenant_id_of(ingestor: Ingestor, slug: str) -> uuid.UUID:
    await ingestor.start()
    from civitas_ray.db.session import tenant_session
    from civitas_ray.tenants import service as tenants

    async with tenant_session(None, system=True) as s:
        t = await tenants.get_by_slug(session=s, slug=slug)
    if t is None:
        raise ValueError(f"feeds.weather.tenant {slug!r} does not exist")
    return t.id


@ray.remote(num_cpus=0, max_restarts=-1)
class WeatherPollerActor:
    """Ray shell over `WeatherPoller`; nothing persisted. The loop starts in the
    constructor, so a crash-restart by Ray resumes polling with no one calling it."""

    def __init__(self) -> None:
        from civitas_ray.config import get_settings

        self.cfg = get_settings().feeds.weather
        self.stop = asyncio.Event()
        self.poller: WeatherPoller | None = None
        self.task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[dict[str, Any]] | None = None
        # An older Ray builds async actors outside their loop: then `start()` does it.
        with contextlib.suppress(RuntimeError):
            self._starting = asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> dict[str, Any]:
        if self._starting is not None and asyncio.current_task() is not self._starting:
            await asyncio.shield(self._starting)
        if self.task is None:
            ingestor = Ingestor()
            tid = await tenant_id_of(ingestor, self.cfg.tenant)
            self.poller = WeatherPoller(self.cfg, tenant_id=tid, ingestor=ingestor)
            self.task = asyncio.get_running_loop().create_task(self.poller.run(self.stop))
        return self.status()

    def status(self) -> dict[str, Any]:
        return {"url": str(self.cfg.url), "etag": self.poller.etag if self.poller else None,
                **(self.poller.stats if self.poller else {})}

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


WEATHER_ACTOR = "weather-poller"


def start_weather_poller(env_vars: dict[str, str] | None = None) -> bool:
    """Start the weather poller when `feeds.weather.url` is set (from `civitas up`)."""
    from civitas_ray.config import get_settings

    settings = get_settings()
    if settings.feeds.weather.url is None:
        return False
    actor = WeatherPollerActor.options(  # type: ignore[attr-defined]  # a Ray actor class
        name=WEATHER_ACTOR, namespace=settings.ray.namespace, get_if_exists=True,
        lifetime="detached",
        runtime_env={"env_vars": env_vars} if env_vars else None).remote()
    ray.get(actor.start.remote(), timeout=60)
    return True


def stop_weather_poller(timeout_s: float = 30.0) -> bool:
    """Stop it for good (`civitas down`); False when none runs."""
    from civitas_ray.config import get_settings

    try:
        actor = ray.get_actor(WEATHER_ACTOR, namespace=get_settings().ray.namespace)
    except ValueError:
        return False
    try:
        ray.get(actor.shutdown.remote(), timeout=timeout_s)
    finally:
        ray.kill(actor, no_restart=True)
    return True
