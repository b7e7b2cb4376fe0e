"""The Forecaster Serve deployment: registry models served from memory, swapped without
dropping a request.

Each replica holds one immutable `ModelTable`: for every (tenant, model name, subject)
the version that serves it and, when there is one, the shadow version scored beside it.
A new table is built completely (rows read, artifacts fetched and decoded off the event
loop) and then put in place with one assignment, so a request that already holds the old
table finishes on it and no request ever waits for a load. Tables are rebuilt:

* by `reconfigure(user_config)`: a redeploy of serve_config.yaml (`civitas up`,
  `serve deploy`) whose only change is the Forecaster's `user_config` is a lightweight
  update, so Serve calls it on the running replicas instead of replacing them. `pins`
  choose the version that serves a subject whatever the registry says;
* every `refresh_s` seconds in the background, so promotions, shadows and rollbacks made
  through the registry reach the replicas without a redeploy.

A failed build (database down, artifact missing or tampered with) leaves the current table
serving: a refresh logs it and tries again later, a reconfigure raises so that Serve
reports the deploy as failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from civitas_ray.db.session import tenant_session
from civitas_ray.errors import NotFound, ServiceUnavailable, ValidationFailed
from civitas_ray.ml import registry
from civitas_ray.ml.models import MODELS, ForecastModel
from civitas_ray.ml.registry_models import ModelVersion
from civitas_ray.runtime.handles import OptionalHandle
from civitas_ray.storage import get_storage

logger = logging.getLogger(__name__)

APP_NAME = "forecaster"
DEPLOYMENT_NAME = "Forecaster"
MAX_HORIZON = 24 * 14
MAX_HISTORY = 24 * 7 * 8
# Forecast values kept per shadowed subject until actuals arrive for their instants.
PENDING_PER_SUBJECT = 5000
# How often an idle refresh loop (refresh_s = 0) looks whether it was switched on.
IDLE_CHECK_S = 5.0
LOAD_CONCURRENCY = 4
# Feature rows one `score` request may carry, and the size of an .npy payload holding them.
MAX_SCORE_ROWS = 200_000
MAX_SCORE_BYTES = 256 * 2**20

_M = TypeVar("_M", bound=BaseModel)
_PIN_KEY = re.compile(r"^(?P<tenant>[^/]+)/(?P<name>[^/]+)/(?P<subject>.+)$")


# ---- errors: specific, picklable (they cross the handle), mapped to HTTP by their base ----
class UnknownSubject(NotFound):
    """No version serves this (tenant, name, subject): nothing in production and no pin."""


class ForecastRequestError(ValidationFailed):
    """A forecast or observation request that cannot be answered as given."""


class ForecasterConfigError(ValidationFailed):
    """A user_config that cannot be applied; the table in service stays as it was."""


class ForecasterNotReady(ServiceUnavailable):
    """The replica has no model table yet (its first build failed or is under way)."""


# ---- the edges: user_config, requests, observations -------------------------------------
@dataclass(frozen=True, slots=True, order=True)
class SubjectRef:
    """One served series: `<tenant uuid>/<model name>/<subject_key>` in pins and stats."""

    tenant_id: uuid.UUID
    name: str
    subject_key: str

    @classmethod
    def parse(cls, key: str) -> SubjectRef:
        m = _PIN_KEY.match(key)
        if m is None:
            raise ValueError(f"{key!r} is not '<tenant uuid>/<model name>/<subject_key>'")
        try:
            tenant = uuid.UUID(m["tenant"])
        except ValueError:
            raise ValueError(f"{key!r}: {m['tenant']!r} is not a tenant uuid") from None
        return cls(tenant, m["name"], m["subject"])

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.name}/{self.subject_key}"

    def as_dict(self) -> dict[str, str]:
        return {"tenant_id": str(self.tenant_id), "name": self.name,
                "subject_key": self.subject_key}


class ForecasterConfig(BaseModel):
    """The Forecaster's `user_config` in serve_config.yaml.

    Bump `generation` with every redeploy: responses carry it, so a caller sees which
    redeploy answered, and Serve only calls `reconfigure` when the config changed.
    """

    model_config = ConfigDict(extra="forbid")

    generation: int = Field(default=0, ge=0)
    pins: dict[str, uuid.UUID] = Field(default_factory=dict)
    refresh_s: float = Field(default=30.0, ge=0.0, le=86400.0)  # 0: no background refresh

    @field_validator("pins")
    @classmethod
    def _pin_keys(cls, pins: dict[str, uuid.UUID]) -> dict[str, uuid.UUID]:
        for key in pins:
            SubjectRef.parse(key)
        return pins

    def pinned(self) -> dict[SubjectRef, uuid.UUID]:
        return {SubjectRef.parse(k): v for k, v in self.pins.items()}


class SeriesIn(BaseModel):
    """Parallel columns: instants (ISO 8601 or epoch seconds; naive means UTC) and values."""

    model_config = ConfigDict(extra="forbid")

    ts: list[datetime] = Field(min_length=1, max_length=MAX_HISTORY)
    value: list[float | None] = Field(min_length=1, max_length=MAX_HISTORY)

    @model_validator(mode="after")
    def _same_length(self) -> SeriesIn:
        if len(self.ts) != len(self.value):
            raise ValueError(f"ts has {len(self.ts)} items but value has {len(self.value)}")
        return self

    def series(self) -> pd.Series:
        index = pd.DatetimeIndex(pd.to_datetime(self.ts, utc=True), name="ts")
        return pd.Series(np.asarray(self.value, dtype="float64"), index=index)


class CovariatesIn(BaseModel):
    """Covariate columns on their own instants (rows after the history are a forecast)."""

    model_config = ConfigDict(extra="forbid")

    ts: list[datetime] = Field(min_length=1, max_length=MAX_HISTORY + MAX_HORIZON)
    columns: dict[str, list[float | None]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> CovariatesIn:
        for name, values in self.columns.items():
            if len(values) != len(self.ts):
                raise ValueError(f"covariate {name!r} has {len(values)} values for "
                                 f"{len(self.ts)} instants")
        return self

    def frame(self) -> pd.DataFrame:
        index = pd.DatetimeIndex(pd.to_datetime(self.ts, utc=True), name="ts")
        return pd.DataFrame({k: np.asarray(v, dtype="float64") for k, v in self.columns.items()},
                            index=index)


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: uuid.UUID
    name: str = Field(min_length=1, max_length=100)
    subject_key: str = Field(min_length=1, max_length=160)
    history: SeriesIn
    horizon: int = Field(ge=1, le=MAX_HORIZON)
    covariates: CovariatesIn | None = None

    @property
    def ref(self) -> SubjectRef:
        return SubjectRef(self.tenant_id, self.name, self.subject_key)


class Observation(BaseModel):
    """Actual values of a subject, sent after the fact to score production against shadow."""

    model_config = ConfigDict(extra="forbid")

    tenant_id: uuid.UUID
    name: str = Field(min_length=1, max_length=100)
    subject_key: str = Field(min_length=1, max_length=160)
    actuals: SeriesIn

    @property
    def ref(self) -> SubjectRef:
        return SubjectRef(self.tenant_id, self.name, self.subject_key)


def feature_matrix(features: Any) -> np.ndarray:
    """A 2-D float64 matrix from an .npy payload (bytes), a numpy array or a list of rows
    (None and NaN are missing values, as LightGBM reads them); anything else is refused."""
    if isinstance(features, bytes | bytearray | memoryview):
        if len(features) > MAX_SCORE_BYTES:
            raise ValueError(f"the .npy payload is {len(features)} bytes; at most "
                             f"{MAX_SCORE_BYTES} are accepted")
        try:
            array = np.load(io.BytesIO(features), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"features bytes are not an .npy array: {exc}") from None
    elif isinstance(features, np.ndarray):
        array = features
    elif isinstance(features, list):
        try:
            array = np.array(features, dtype="float64")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"features rows are not numbers of equal length: {exc}") from None
    else:
        raise ValueError("features must be .npy bytes, a numpy array or a list of rows, "
                         f"not {type(features).__name__}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"features must be numbers, not dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(f"features must be a non-empty 2-D array (rows x features), got shape "
                         f"{array.shape}")
    if array.shape[0] > MAX_SCORE_ROWS:
        raise ValueError(f"{array.shape[0]} rows in one request; at most {MAX_SCORE_ROWS}")
    out = np.ascontiguousarray(array, dtype="float64")
    if np.isinf(out).any():
        raise ValueError("features hold infinite values; send missing values as NaN or null")
    return out


class ScoreRequest(BaseModel):
    """Ready-made feature rows of one subject, scored by the version that serves it."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    tenant_id: uuid.UUID
    name: str = Field(min_length=1, max_length=100)
    subject_key: str = Field(min_length=1, max_length=160)
    features: np.ndarray

    @field_validator("features", mode="before")
    @classmethod
    def _matrix(cls, features: Any) -> np.ndarray:
        return feature_matrix(features)

    @property
    def ref(self) -> SubjectRef:
        return SubjectRef(self.tenant_id, self.name, self.subject_key)


def _parse(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
                  for e in exc.errors()]
        raise ForecastRequestError(
            f"invalid {model.__name__}: " + "; ".join(f"{e['loc']}: {e['msg']}" for e in errors),
            errors=errors) from None


# ---- the model table ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionRow:
    """What a replica needs of a model_version row (read inside the session)."""

    id: uuid.UUID
    ref: SubjectRef
    version: int
    kind: str
    stage: str
    artifact_key: str
    artifact_sha256: str

    @classmethod
    def of(cls, row: ModelVersion) -> VersionRow:
        return cls(id=row.id, ref=SubjectRef(row.tenant_id, row.name, row.subject_key),
                   version=int(row.version), kind=row.kind, stage=row.stage,
                   artifact_key=str(row.params.get("artifact_key") or ""),
                   artifact_sha256=str(row.params.get("artifact_sha256") or ""))


@dataclass(frozen=True, slots=True)
class Served:
    row: VersionRow
    model: ForecastModel

    def describe(self) -> dict[str, Any]:
        return {"model_version_id": str(self.row.id), "version": self.row.version,
                "kind": self.row.kind, "stage": self.row.stage}


@dataclass(frozen=True, slots=True)
class Entry:
    production: Served
    shadow: Served | None
    pinned: bool


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Immutable: replaced whole, never edited, so readers need no lock."""

    generation: int
    entries: Mapping[SubjectRef, Entry]
    built_at: datetime
    # Versions left out because their artifact would not load: id -> reason.
    unloadable: Mapping[uuid.UUID, str] = field(default_factory=dict)

    def versions(self) -> dict[uuid.UUID, Served]:
        out: dict[uuid.UUID, Served] = {}
        for e in self.entries.values():
            out[e.production.row.id] = e.production
            if e.shadow is not None:
                out[e.shadow.row.id] = e.shadow
        return out


def plan_table(rows: list[VersionRow], pins: Mapping[SubjectRef, VersionRow]
               ) -> dict[SubjectRef, tuple[VersionRow, VersionRow | None, bool]]:
    """Which version serves each subject and which one shadows it.

    A pin beats the registry's production version; the registry's shadow is scored beside
    whatever serves, unless it is the very version that serves. A subject with only a
    shadow is not served.
    """
    production: dict[SubjectRef, VersionRow] = {}
    shadow: dict[SubjectRef, VersionRow] = {}
    for r in rows:
        if r.stage == "production":
            production[r.ref] = r
        elif r.stage == "shadow":
            shadow[r.ref] = r
    plan: dict[SubjectRef, tuple[VersionRow, VersionRow | None, bool]] = {}
    for ref in sorted(set(production) | set(pins)):
        serving = pins.get(ref) or production[ref]
        beside = shadow.get(ref)
        plan[ref] = (serving, beside if beside is not None and beside.id != serving.id else None,
                     ref in pins)
    return plan


def _decode(row: VersionRow, blob: bytes) -> ForecastModel:
    """Check the artifact against the row's digest, then decode it (CPU: a worker thread)."""
    if row.artifact_sha256 and hashlib.sha256(blob).hexdigest() != row.artifact_sha256:
        raise ForecasterConfigError(f"artifact of model version {row.id} does not match its "
                                    "SHA-256: refusing to serve it")
    cls = MODELS[row.kind]
    return cls.from_bytes(blob)


async def _load(row: VersionRow) -> ForecastModel:
    if row.kind not in MODELS:
        raise ForecasterConfigError(f"model version {row.id} has unknown kind {row.kind!r}")
    if not row.artifact_key:
        raise ForecasterConfigError(f"model version {row.id} has no artifact")
    blob = await get_storage().get(row.artifact_key)
    return await asyncio.to_thread(_decode, row, blob)


async def read_rows(config: ForecasterConfig
                    ) -> tuple[list[VersionRow], dict[SubjectRef, VersionRow]]:
    """Production and shadow rows of every tenant, and the pinned rows (checked against
    the subject they are pinned to), in one system transaction."""
    async with tenant_session(None, system=True) as session:
        rows = [VersionRow.of(r) for r in await registry.serving_versions(session)]
        pinned: dict[SubjectRef, VersionRow] = {}
        for ref, version_id in config.pinned().items():
            found = await session.get(ModelVersion, version_id)
            if found is None:
                raise ForecasterConfigError(f"pin {ref}: model version {version_id} not found")
            row = VersionRow.of(found)
            if row.ref != ref:
                raise ForecasterConfigError(f"pin {ref}: model version {version_id} belongs to "
                                            f"{row.ref}")
            pinned[ref] = row
    return rows, pinned


async def build_table(config: ForecasterConfig, current: ModelTable | None) -> ModelTable:
    """A complete new table; versions already in `current` are reused, not reloaded
    (a version's artifact never changes)."""
    rows, pinned = await read_rows(config)
    plan = plan_table(rows, pinned)
    have = current.versions() if current is not None else {}
    wanted = {r.id: r for serving, beside, _ in plan.values()
              for r in (serving, beside) if r is not None}
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)

    async def get(row: VersionRow) -> Served | Exception:
        if row.id in have:
            return Served(row, have[row.id].model)
        async with gate:
            try:
                return Served(row, await _load(row))
            except Exception as exc:  # one bad artifact must not take every tenant down
                return exc

    loaded = dict(zip(wanted, await asyncio.gather(*(get(r) for r in wanted.values())),
                      strict=True))
    unloadable: dict[uuid.UUID, str] = {}
    entries: dict[SubjectRef, Entry] = {}
    for ref, (serving, beside, is_pinned) in plan.items():
        prod = loaded[serving.id]
        if isinstance(prod, Exception):
            if is_pinned:  # the deployer asked for exactly this version: refuse the plan
                raise ForecasterConfigError(
                    f"pinned version {serving.id} of {ref.as_dict()} cannot be loaded: "
                    f"{prod!r}") from prod
            unloadable[serving.id] = repr(prod)
            logger.error("model version not loadable; its subject is not served",
                         extra={"model_version_id": str(serving.id), "error": repr(prod)})
            continue
        shadow = loaded[beside.id] if beside is not None else None
        if isinstance(shadow, Exception):
            assert beside is not None
            unloadable[beside.id] = repr(shadow)
            logger.error("shadow version not loadable; scored without it",
                         extra={"model_version_id": str(beside.id), "error": repr(shadow)})
            shadow = None
        entries[ref] = Entry(production=prod, shadow=shadow, pinned=is_pinned)
    return ModelTable(generation=config.generation, entries=entries,
                      built_at=datetime.now(UTC), unloadable=unloadable)


# ---- prediction (runs in a worker thread) ----------------------------------------------
def _points(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"ts": ts.isoformat(), "value": float(v), "lower": float(lo), "upper": float(hi)}
            for ts, v, lo, hi in zip(frame.index, frame["value"], frame["lower"],
                                     frame["upper"], strict=True)]


@dataclass(slots=True)
class Answer:
    """One request's result: the response, and what the shadow book needs of it."""

    response: dict[str, Any]
    ref: SubjectRef
    entry: Entry
    ts_ns: np.ndarray | None = None
    production: np.ndarray | None = None
    shadow: np.ndarray | None = None


Outcome = Answer | Exception


def _predict_one(table: ModelTable, req: ForecastRequest) -> Outcome:
    entry = table.entries.get(req.ref)
    if entry is None:
        return UnknownSubject(f"no model serves {req.ref}: nothing of that name and subject "
                              "is in production or pinned")
    history = req.history.series()
    covariates = req.covariates.frame() if req.covariates is not None else None
    try:
        main = entry.production.model.predict(history, req.horizon, covariates)
        extra = (entry.shadow.model.predict(history, req.horizon, covariates)
                 if entry.shadow is not None else None)
    except ValueError as exc:  # ModelError, SeriesError: the request's data, not a bug
        return ForecastRequestError(f"cannot forecast {req.ref}: {exc}")
    shadow_doc = None
    if extra is not None and entry.shadow is not None:
        diff = np.abs(main["value"].to_numpy() - extra["value"].to_numpy())
        shadow_doc = {**entry.shadow.describe(), "points": _points(extra),
                      "mean_abs_diff": float(diff.mean())}
    response = {**entry.production.describe(), "generation": table.generation,
                "pinned": entry.pinned, "points": _points(main), "shadow": shadow_doc}
    answer = Answer(response=response, ref=req.ref, entry=entry)
    if extra is not None:
        answer.ts_ns = main.index.as_unit("ns").asi8
        answer.production = main["value"].to_numpy(dtype="float64")
        answer.shadow = extra["value"].to_numpy(dtype="float64")
    return answer


def predict_batch(table: ModelTable, requests: list[ForecastRequest]) -> list[Outcome]:
    """Every request of a batch on the same table; one request's failure is its own."""
    out: list[Outcome] = []
    for req in requests:
        try:
            out.append(_predict_one(table, req))
        except Exception as exc:  # a bug must fail its request, not the whole batch
            logger.exception("forecast failed", extra={"subject": str(req.ref)})
            out.append(exc)
    return out


def score_rows(model: ForecastModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """value, lower, upper of feature rows, in the target's units: exactly what the first
    step of a forecast makes of its feature row (level, interval correction, limits)."""
    scale = model._scale(X)
    mid, lo, hi = model._predict_matrix(X)
    if model._widen.size:
        lo, hi = lo - model._widen[0], hi + model._widen[0]
    mid, lo, hi = (model._bound(np.clip(x * scale, *model._limits)) for x in (mid, lo, hi))
    return mid, np.minimum(lo, mid), np.maximum(hi, mid)


ScoreOutcome = dict[str, Any] | Exception


def score_batch(table: ModelTable, requests: list[ScoreRequest]) -> list[ScoreOutcome]:
    """Every request of a batch on the same table; the rows of all requests served by one
    version go through LightGBM in one call, which is what batching buys."""
    out: list[ScoreOutcome | None] = [None] * len(requests)
    groups: dict[uuid.UUID, list[int]] = {}
    for i, req in enumerate(requests):
        entry = table.entries.get(req.ref)
        if entry is None:
            out[i] = UnknownSubject(f"no model serves {req.ref}: nothing of that name and "
                                    "subject is in production or pinned")
            continue
        names = entry.production.model.feature_names
        if req.features.shape[1] != len(names):
            out[i] = ForecastRequestError(
                f"cannot score {req.ref}: version {entry.production.row.version} reads "
                f"{len(names)} features ({', '.join(names)}), the rows have "
                f"{req.features.shape[1]}")
            continue
        groups.setdefault(entry.production.row.id, []).append(i)
    for members in groups.values():
        entry = table.entries[requests[members[0]].ref]
        X = np.concatenate([requests[i].features for i in members])
        try:
            value, lower, upper = score_rows(entry.production.model, X)
        except Exception as exc:  # a bug fails this version's requests, not the batch
            logger.exception("scoring failed", extra={
                "model_version_id": str(entry.production.row.id), "rows": int(X.shape[0])})
            for i in members:
                out[i] = exc
            continue
        start = 0
        for i in members:
            stop = start + requests[i].features.shape[0]
            out[i] = {**entry.production.describe(), "generation": table.generation,
                      "pinned": entry.pinned, "rows": stop - start,
                      "value": value[start:stop], "lower": lower[start:stop],
                      "upper": upper[start:stop]}
            start = stop
    return [o if o is not None else RuntimeError("request not scored") for o in out]


# ---- shadow comparison ----------------------------------------------------------------
@dataclass(slots=True)
class ShadowStats:
    """Production against shadow for one subject and one pair of versions."""

    production: dict[str, Any]
    shadow: dict[str, Any]
    requests: int = 0
    points: int = 0
    abs_diff_sum: float = 0.0
    observed: int = 0
    production_abs_err: float = 0.0
    shadow_abs_err: float = 0.0
    # instant (ns) -> (production, shadow) of the newest forecast for it, until observed
    pending: OrderedDict[int, tuple[float, float]] = field(default_factory=OrderedDict)

    def summary(self) -> dict[str, Any]:
        n = self.observed
        return {"production": self.production, "shadow": self.shadow,
                "requests": self.requests, "points": self.points,
                "mean_abs_diff": self.abs_diff_sum / self.points if self.points else None,
                "observed": n,
                "production_mae": self.production_abs_err / n if n else None,
                "shadow_mae": self.shadow_abs_err / n if n else None}


class ShadowBook:
    """Per-subject shadow statistics in replica memory (lost on restart, by design:
    they judge a shadow over its recent traffic, they are no record)."""

    def __init__(self, pending_limit: int = PENDING_PER_SUBJECT) -> None:
        self._stats: dict[SubjectRef, ShadowStats] = {}
        self._limit = pending_limit

    def record(self, answer: Answer) -> None:
        shadow = answer.entry.shadow
        if shadow is None or answer.production is None or answer.shadow is None:
            return
        s = self._stats.get(answer.ref)
        prod_id = str(answer.entry.production.row.id)
        if (s is None or s.production["model_version_id"] != prod_id
                or s.shadow["model_version_id"] != str(shadow.row.id)):
            s = self._stats[answer.ref] = ShadowStats(
                production=answer.entry.production.describe(), shadow=shadow.describe())
        s.requests += 1
        s.points += int(answer.production.size)
        s.abs_diff_sum += float(np.abs(answer.production - answer.shadow).sum())
        assert answer.ts_ns is not None
        for ts, p, q in zip(answer.ts_ns.tolist(), answer.production.tolist(),
                            answer.shadow.tolist(), strict=True):
            s.pending[ts] = (p, q)
            s.pending.move_to_end(ts)
        while len(s.pending) > self._limit:
            s.pending.popitem(last=False)

    def observe(self, ref: SubjectRef, actuals: pd.Series) -> int:
        """Score the pending forecasts of these instants; returns how many matched."""
        s = self._stats.get(ref)
        if s is None:
            return 0
        matched = 0
        for ts, value in zip(actuals.index.as_unit("ns").asi8.tolist(), actuals.tolist(),
                             strict=True):
            if not np.isfinite(value):
                continue
            pair = s.pending.pop(ts, None)
            if pair is None:
                continue
            s.observed += 1
            s.production_abs_err += abs(value - pair[0])
            s.shadow_abs_err += abs(value - pair[1])
            matched += 1
        return matched

    def drop_except(self, live: Mapping[SubjectRef, Entry]) -> None:
        """Forget subjects that no longer have a shadow."""
        for ref in [r for r in self._stats if live.get(r) is None or live[r].shadow is None]:
            del self._stats[ref]

    def summary(self) -> list[dict[str, Any]]:
        return [{**ref.as_dict(), **s.summary()} for ref, s in sorted(self._stats.items())]


# ---- the deployment -------------------------------------------------------------------
@serve.deployment(name=DEPLOYMENT_NAME, user_config=ForecasterConfig().model_dump(mode="json"),
                  max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
class Forecaster:
    """Serves `forecast` from an in-memory table of registry models.

    Nothing is persisted here: the table is rebuilt from the registry on start, on every
    `reconfigure` and every `refresh_s`; the shadow statistics live and die with the
    replica. Requests are batched and predicted in a worker thread, so the replica's event
    loop keeps taking requests while LightGBM runs.
    """

    def __init__(self) -> None:
        from civitas_ray import logging as civitas_logging
        from civitas_ray.config import get_settings

        settings = get_settings()
        civitas_logging.configure(settings.log_level, json_output=settings.log_json)
        self._config = ForecasterConfig()
        self._table: ModelTable | None = None
        self._build_lock = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None
        self._book = ShadowBook()
        self._failed_refreshes = 0
        self._last_error: dict[str, Any] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new user_config: build the whole table, then swap it in.

        Serve stops a replica whose reconfigure raises, so a replica that already serves
        keeps its table when the new config cannot be applied: the error goes to the log
        and to `info()["last_error"]`. A replica without a table raises, and Serve reports
        the deploy as failed with this message.
        """
        try:
            try:
                config = ForecasterConfig.model_validate(user_config)
            except ValidationError as exc:
                raise ForecasterConfigError(f"invalid Forecaster user_config: {exc}") from None
            await self._rebuild(config, reason="reconfigure")
            self._last_error = None
        except Exception as exc:
            if self._table is None:
                raise
            self._last_error = {"at": datetime.now(UTC).isoformat(), "error": str(exc),
                                "user_config": user_config}
            logger.error("forecaster user_config not applied; the table in service keeps "
                         "serving", extra={"error": str(exc),
                                           "generation": self._table.generation})
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _rebuild(self, config: ForecasterConfig, *, reason: str) -> ModelTable:
        async with self._build_lock:
            table = await build_table(config, self._table)
            self._config, self._table = config, table  # the swap: one assignment each
        self._book.drop_except(table.entries)
        logger.info("forecaster table in service", extra={
            "reason": reason, "generation": table.generation, "subjects": len(table.entries),
            "pins": len(config.pins),
            "shadows": sum(1 for e in table.entries.values() if e.shadow is not None)})
        return table

    async def _refresh_loop(self) -> None:
        while True:
            delay = self._config.refresh_s
            await asyncio.sleep(delay if delay > 0 else IDLE_CHECK_S)
            if self._config.refresh_s <= 0:
                continue
            try:
                await self._rebuild(self._config, reason="refresh")
                self._failed_refreshes = 0
            except Exception:
                self._failed_refreshes += 1
                logger.exception("forecaster refresh failed; the current table keeps serving",
                                 extra={"failures": self._failed_refreshes})

    async def refresh(self) -> dict[str, Any]:
        """Rebuild now from the registry (what the background loop does every refresh_s)."""
        await self._rebuild(self._config, reason="refresh")
        return await self.info()

    async def forecast(self, request: dict[str, Any]) -> dict[str, Any]:
        """{tenant_id, name, subject_key, history: {ts, value}, horizon[, covariates]} ->
        {model_version_id, version, generation, points, shadow}."""
        req = _parse(ForecastRequest, request)
        outcome = await self._forecast_batch(req)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome.response

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _forecast_batch(self, requests: list[ForecastRequest]) -> list[Outcome]:
        table = self._table
        if table is None:
            return [ForecasterNotReady("the forecaster has no models loaded yet")
                    for _ in requests]
        outcomes = await asyncio.to_thread(predict_batch, table, requests)
        for o in outcomes:
            if isinstance(o, Answer):
                self._book.record(o)
        return outcomes

    async def score(self, request: dict[str, Any]) -> dict[str, Any]:
        """Bulk scoring of ready-made feature rows: {tenant_id, name, subject_key, features:
        .npy bytes, a numpy array or a list of rows, columns in the serving version's
        `feature_names` order} -> {model_version_id, version, kind, stage, generation,
        pinned, rows, value, lower, upper} with float64 numpy arrays, one value per row.

        The rows are one-step-ahead feature rows (`features.build_features`); no shadow
        is scored. Requests are batched and all rows of one version predicted together
        in a worker thread.
        """
        req = _parse(ScoreRequest, request)
        outcome = await self._score_batch(req)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _score_batch(self, requests: list[ScoreRequest]) -> list[ScoreOutcome]:
        table = self._table
        if table is None:
            return [ForecasterNotReady("the forecaster has no models loaded yet")
                    for _ in requests]
        return await asyncio.to_thread(score_batch, table, requests)

    async def observe(self, request: dict[str, Any]) -> dict[str, Any]:
        """{tenant_id, name, subject_key, actuals: {ts, value}}: score production and
        shadow forecasts made for these instants. Returns how many instants matched."""
        obs = _parse(Observation, request)
        return {"matched": self._book.observe(obs.ref, obs.actuals.series())}

    async def stats(self) -> dict[str, Any]:
        """Shadow comparison per subject: requests, mean |production - shadow|, and the
        MAE of each against the actuals sent through `observe`."""
        table = self._table
        return {"generation": table.generation if table else None,
                "subjects": self._book.summary()}

    async def info(self) -> dict[str, Any]:
        """This replica: process, generation, and the version serving each subject."""
        table = self._table
        context = serve.get_replica_context()
        return {
            "pid": os.getpid(), "replica": context.replica_id.unique_id,
            "generation": table.generation if table else None,
            "built_at": table.built_at.isoformat() if table else None,
            "refresh_s": self._config.refresh_s, "last_error": self._last_error,
            "failed_refreshes": self._failed_refreshes,
            "unloadable": {str(k): v for k, v in (table.unloadable if table else {}).items()},
            "subjects": [{**ref.as_dict(), "serving": e.production.describe(),
                          "shadow": e.shadow.describe() if e.shadow else None,
                          "pinned": e.pinned}
                         for ref, e in (table.entries.items() if table else ())]}


class ForecasterArgs(BaseModel):
    """The `args:` of the forecaster application (none yet; a misspelt one fails the deploy)."""

    model_config = ConfigDict(extra="forbid")


def build(args: ForecasterArgs) -> Application:
    """Application builder named by serve_config.yaml (`civitas_ray.ml.serving:build`)."""
    return Forecaster.bind()  # type: ignore[attr-defined]  # @serve.deployment made it one


def get_forecaster_handle() -> DeploymentHandle:
    """The handle the API and the zone actors call: `await h.forecast.remote({...})`."""
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)


_forecaster = OptionalHandle(lambda: get_forecaster_handle(), "Forecaster")


async def forecast_via_serve(*, tenant_id: Any, name: str, subject_key: str,
                             history: pd.Series, horizon: int,
                             ) -> list[dict[str, Any]] | None:
    """Ask the Forecaster deployment; None when Serve or the deployment is not running
    here (the caller then predicts in-process and says so). A subject the Forecaster
    has not loaded yet (promoted a moment ago, before its refresh) also gives None."""
    handle = _forecaster.get()
    if handle is None:
        return None
    tail = history.iloc[-MAX_HISTORY:]  # the grid, gaps as nulls: the model sees them
    request = {"tenant_id": str(tenant_id), "name": name, "subject_key": subject_key,
               "history": {"ts": [t.isoformat() for t in tail.index],
                           "value": [None if np.isnan(v) else float(v)
                                     for v in tail.to_numpy(dtype="float64")]},
               "horizon": horizon}
    try:
        out: dict[str, Any] = await handle.forecast.remote(request)
    except (UnknownSubject, ForecasterNotReady):
        return None
    except Exception as exc:
        if isinstance(getattr(exc, "cause", None), UnknownSubject | ForecasterNotReady):
            return None
        raise
    return [{"ts": datetime.fromisoformat(p["ts"]), "value": p["value"],
             "lower": p["lower"], "upper": p["upper"]} for p in out["points"]]
