"""History import: CSV/Parquet files into the telemetry hypertable at COPY speed.

`run_import()` reads a file in chunks (pandas/pyarrow, in a worker thread), maps its
columns to readings (long: one value column; wide: one column per metric), parses
timestamps (a format, a time zone, DST folds and gaps), resolves assets within the
tenant, coerces values, drops duplicates (within the file, and rows already stored)
and loads each chunk with one binary COPY in one transaction, so a failure never leaves
half a chunk behind and a re-run stores only what is missing. Everything dropped is
counted by reason; per stream it reports the expected interval and the gaps.

It connects as the ingest role, which bypasses row-level security: every asset is
resolved with the tenant in the query, never trusted from the file.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import logging
import re
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, field_validator, model_validator

from civitas_ray.telemetry import copy as pgcopy
from civitas_ray.telemetry.writer import Rows

log = logging.getLogger(__name__)

METRIC_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
UNIX_FORMATS = {"unix": 1_000_000, "unix_ms": 1_000}
MAX_EXAMPLES = 20
# A time format that fails on more than this share of a file's first chunk is wrong,
# not the data: the import stops before writing anything.
MAX_FIRST_CHUNK_TIME_FAILURES = 0.5
GAP_TOLERANCE = 1.5  # a step longer than 1.5 expected intervals is a gap

Ambiguous = Literal["infer", "earliest", "latest", "drop", "error"]
Nonexistent = Literal["drop", "shift_forward", "error"]
ProgressFn = Callable[["Progress"], None]

# Reasons a reading is rejected (keys of ImportReport.rejected).
R_TS_MISSING = "missing timestamp"
R_TS_UNPARSEABLE = "unparseable timestamp"
R_TS_NONEXISTENT = "nonexistent local time (DST gap)"
R_TS_AMBIGUOUS = "ambiguous local time (DST fold)"
R_TS_OLD = "timestamp too old"
R_TS_FUTURE = "timestamp in the future"
R_VALUE_MISSING = "missing value"
R_VALUE_NAN = "not a number"
R_VALUE_INF = "infinite value"
R_ASSET_MISSING = "missing asset"
R_ASSET_UNKNOWN = "unknown asset"
R_ASSET_AMBIGUOUS = "asset name matches several assets"
R_METRIC_MISSING = "missing metric"
R_METRIC_INVALID = "invalid metric name"


class ImportFailed(Exception):
    """The import cannot start or go on (bad mapping, unknown asset, wrong time format)."""


class ColumnMap(BaseModel):
    """One wide-file column: its readings go to `metric` of `asset` (or the default asset)."""

    column: str = Field(min_length=1)
    metric: str
    asset: str | None = None

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not METRIC_RE.match(v):
            raise ValueError(f"metric {v!r} must be 1 to 64 of A-Z a-z 0-9 _ . : -")
        return v

    @classmethod
    def parse(cls, spec: str) -> ColumnMap:
        """`COLUMN=METRIC` or `COLUMN=ASSET:METRIC` (the first ':' ends the asset)."""
        column, sep, target = spec.rpartition("=")
        if not sep or not column or not target:
            raise ValueError(f"--column {spec!r}: expected COLUMN=METRIC or COLUMN=ASSET:METRIC")
        asset, colon, metric = target.partition(":")
        return cls(column=column, metric=metric if colon else asset,
                   asset=asset if colon else None)


class ImportSpec(BaseModel):
    """What to import and how to map it; validated before the file is opened."""

    path: Path
    time_col: str = Field(min_length=1)
    time_format: str | None = Field(
        None, description="strptime format, 'unix' or 'unix_ms'; ISO 8601 when absent")
    tz: str = Field("UTC", description="IANA zone of naive timestamps")
    ambiguous: Ambiguous = "infer"
    nonexistent: Nonexistent = "drop"
    value_col: str | None = None
    metric: str | None = None
    metric_col: str | None = None
    asset: str | None = None
    asset_col: str | None = None
    columns: list[ColumnMap] = Field(default_factory=list)
    interval_s: float | None = Field(None, gt=0, description="expected interval; inferred "
                                     "per stream (most common step) when absent")
    sep: str | None = Field(None, description="CSV separator; sniffed from the header")
    encoding: str = "utf-8"
    chunk_rows: int = Field(50_000, ge=1)
    quality: int = Field(0, ge=0, le=32767)
    dry_run: bool = False

    @model_validator(mode="after")
    def _mapping(self) -> Self:
        if not self.path.is_file():
            raise ValueError(f"file not found: {self.path}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc
        if (self.value_col is None) == (not self.columns):
            raise ValueError("give either --value-col (a long file) or --column (a wide file)")
        if self.value_col is not None:
            if (self.metric is None) == (self.metric_col is None):
                raise ValueError("a long file needs exactly one of --metric or --metric-col")
            if (self.asset is None) == (self.asset_col is None):
                raise ValueError("a long file needs exactly one of --asset or --asset-col")
            if self.metric is not None and not METRIC_RE.match(self.metric):
                raise ValueError(f"metric {self.metric!r} must be 1 to 64 of "
                                 "A-Z a-z 0-9 _ . : -")
        else:
            if self.metric is not None or self.metric_col is not None:
                raise ValueError("--metric/--metric-col are for long files; a wide file "
                                 "names each column's metric in --column")
            if self.asset is not None and self.asset_col is not None:
                raise ValueError("give --asset or --asset-col, not both")
            for c in self.columns:
                if c.asset is None and self.asset is None and self.asset_col is None:
                    raise ValueError(f"column {c.column!r} has no asset: write "
                                     "COLUMN=ASSET:METRIC or give --asset/--asset-col")
            seen: set[tuple[str | None, str]] = set()
            for c in self.columns:
                key = (c.asset or self.asset, c.metric)
                if key in seen:
                    raise ValueError(f"two columns feed the same stream {key}")
                seen.add(key)
        return self

    @property
    def targets(self) -> list[ColumnMap]:
        """The value columns: one for a long file, one per --column for a wide one."""
        if self.value_col is not None:
            return [ColumnMap(column=self.value_col, metric=self.metric or "_",
                              asset=self.asset)]
        return [c if c.asset else c.model_copy(update={"asset": self.asset})
                for c in self.columns]

    @property
    def needed_columns(self) -> list[str]:
        cols = [self.time_col, *(t.column for t in self.targets)]
        cols += [c for c in (self.asset_col, self.metric_col) if c]
        return list(dict.fromkeys(cols))


class StreamReport(BaseModel):
    asset_id: uuid.UUID
    asset: str
    metric: str
    readings: int
    first_ts: datetime | None
    last_ts: datetime | None
    interval_s: float | None
    gaps: int
    missing_intervals: int
    largest_gap_s: float | None
    largest_gap_after: datetime | None


class ImportReport(BaseModel):
    """What happened to every row of the file: stored, duplicate, or rejected and why."""

    file: str
    tenant_id: uuid.UUID
    dry_run: bool
    rows_read: int = 0
    readings: int = 0  # rows x value columns = inserted + already stored + duplicates + rejected
    inserted: int = 0
    duplicates_in_file: int = 0
    duplicates_conflicting: int = 0
    already_stored: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)
    rejected_examples: list[str] = Field(default_factory=list)
    unknown_assets: dict[str, int] = Field(default_factory=dict)
    ambiguous_times: int = 0
    nonexistent_times: int = 0
    streams: list[StreamReport] = Field(default_factory=list)
    chunks: int = 0
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0
    readings_per_s: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def gaps(self) -> int:
        return sum(s.gaps for s in self.streams)

    @property
    def missing_intervals(self) -> int:
        return sum(s.missing_intervals for s in self.streams)


@dataclass(slots=True)
class Progress:
    """Reading position (bytes of a CSV, rows of a Parquet file) and running totals."""

    done: int
    total: int
    rows: int
    inserted: int


# ---------------------------------------------------------------------------- assets


@dataclass(slots=True)
class AssetIndex:
    """The tenant's live assets, addressable by UUID text, external id or unique name."""

    ids: list[uuid.UUID] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    by_ref: dict[str, int] = field(default_factory=dict)
    ambiguous_names: set[str] = field(default_factory=set)
    id_bytes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="V16"))

    def lookup(self, ref: str) -> int:
        """Row index, -1 unknown, -2 a name shared by several assets."""
        i = self.by_ref.get(ref)
        if i is not None:
            return i
        return -2 if ref in self.ambiguous_names else -1

    def require(self, ref: str, tenant: str) -> int:
        i = self.lookup(ref)
        if i == -2:
            raise ImportFailed(f"asset name {ref!r} matches several assets in tenant {tenant}; "
                               "use its id or external_id")
        if i < 0:
            raise ImportFailed(f"asset {ref!r} not found in tenant {tenant} (by id, "
                               "external_id or name)")
        return i


async def load_assets(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> AssetIndex:
    rows = await conn.fetch("select id, external_id, name from asset "
                            "where tenant_id = $1 and deleted_at is null order by created_at",
                            tenant_id)
    idx = AssetIndex()
    names: Counter[str] = Counter(r["name"] for r in rows)
    for i, r in enumerate(rows):
        idx.ids.append(r["id"])
        idx.labels.append(r["external_id"] or r["name"])
        idx.by_ref[str(r["id"])] = i
    for i, r in enumerate(rows):
        if r["external_id"]:
            idx.by_ref.setdefault(r["external_id"], i)
    for i, r in enumerate(rows):
        if names[r["name"]] == 1:
            idx.by_ref.setdefault(r["name"], i)
        elif r["name"] not in idx.by_ref:
            idx.ambiguous_names.add(r["name"])
    idx.id_bytes = np.frombuffer(b"".join(u.bytes for u in idx.ids), dtype="V16") \
        if idx.ids else np.empty(0, dtype="V16")
    return idx


async def resolve_tenant(conn: asyncpg.Connection, slug: str) -> uuid.UUID:
    tid = await conn.fetchval("select id from tenant where slug = $1 and deleted_at is null",
                              slug)
    if tid is None:
        raise ImportFailed(f"no tenant with slug {slug!r}")
    return uuid.UUID(str(tid))


# ---------------------------------------------------------------------------- reading


class _CountingReader(io.RawIOBase):
    """A binary file wrapper that counts the bytes read, for the progress bar."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


@dataclass(slots=True)
class _Source:
    chunks: Iterator[pd.DataFrame]
    position: Callable[[], int]
    total: int
    close: Callable[[], None]


_Opened = tuple[io.RawIOBase | gzip.GzipFile, int, Callable[[], int], Callable[[], None]]


def _open_bytes(path: Path) -> _Opened:
    """The CSV bytes (a plain, .gz or one-CSV .zip file), the size to read, the position
    (bytes read so far, of the same size) and a closer."""
    name = path.name.lower()
    if name.endswith(".zip"):
        zf = zipfile.ZipFile(path)
        members = [i for i in zf.infolist() if not i.is_dir()
                   and not i.filename.startswith("__MACOSX/")]
        csvs = [i for i in members if i.filename.lower().endswith((".csv", ".txt"))]
        if len(csvs) != 1:
            zf.close()
            raise ImportFailed(f"{path.name}: a .zip must hold exactly one CSV file, found "
                               f"{[i.filename for i in members]}")
        member = _CountingReader(zf.open(csvs[0]))

        def close_zip() -> None:
            member.close()
            zf.close()

        return member, csvs[0].file_size, lambda: member.count, close_zip
    raw = _CountingReader(path.open("rb"))
    size = path.stat().st_size
    if name.endswith(".gz"):  # progress by compressed bytes read from disk
        gz = gzip.GzipFile(fileobj=io.BufferedReader(raw))

        def close_gz() -> None:
            gz.close()
            raw.close()

        return gz, size, lambda: raw.count, close_gz
    return raw, size, lambda: raw.count, raw.close


def _sniff_sep(head: bytes, encoding: str) -> str:
    line = head.decode(encoding, errors="replace").splitlines()[0] if head else ""
    counts = {s: line.count(s) for s in (",", ";", "\t", "|")}
    sep = max(counts, key=lambda s: counts[s])
    return sep if counts[sep] else ","


def _open_source(spec: ImportSpec) -> tuple[_Source, list[str]]:
    """Chunked reader over the needed columns; also returns the file's column names."""
    if spec.path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(spec.path)
        names = list(pf.schema_arrow.names)
        _check_columns(spec, names)
        done = [0]

        def batches() -> Iterator[pd.DataFrame]:
            for b in pf.iter_batches(batch_size=spec.chunk_rows, columns=spec.needed_columns):
                done[0] += b.num_rows
                yield b.to_pandas()

        return _Source(batches(), lambda: done[0], pf.metadata.num_rows, pf.close), names
    raw, total, position, close = _open_bytes(spec.path)
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    head = buffered.peek(1 << 16)
    sep = spec.sep or _sniff_sep(head, spec.encoding)
    header = head.decode(spec.encoding, errors="replace").splitlines()
    names = next(csv.reader(header[:1], delimiter=sep), []) if header else []
    names = [n.strip().lstrip("\ufeff") for n in names]
    try:
        _check_columns(spec, names)
    except ImportFailed:
        close()
        raise
    text_cols = {c: "str" for c in (spec.time_col, spec.asset_col, spec.metric_col) if c}
    reader = pd.read_csv(buffered, sep=sep, usecols=spec.needed_columns, dtype=text_cols,
                         chunksize=spec.chunk_rows, encoding=spec.encoding,
                         skipinitialspace=True)
    def close_all() -> None:
        reader.close()
        close()

    return _Source(iter(reader), position, total, close_all), names


def _check_columns(spec: ImportSpec, names: list[str]) -> None:
    missing = [c for c in spec.needed_columns if c not in names]
    if missing:
        raise ImportFailed(f"{spec.path.name}: no column {', '.join(map(repr, missing))}; "
                           f"the file has {names}")


# ---------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Chunk:
    rows: Rows
    rows_read: int


@dataclass
class _State:
    """Everything carried from one chunk to the next (only the parser thread touches it)."""

    spec: ImportSpec
    tenant_id: uuid.UUID
    assets: AssetIndex
    min_ts_us: int
    max_ts_us: int
    report: ImportReport
    metric_codes: dict[str, int] = field(default_factory=dict)
    # (asset index, metric code) -> sorted timestamps and their values seen so far
    seen_ts: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    seen_val: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    # ambiguous-time inference: (group, local date) -> [last local µs, clock went back]
    fold: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    unknown: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rows_offset: int = 0
    first_chunk: bool = True
    ts_weight: int = 1  # readings per row: a bad timestamp rejects all of them

    def reject(self, reason: str, rows: np.ndarray, weight: int = 1) -> None:
        """Count `rows` (file row numbers, 1-based) under `reason`, keep a few examples."""
        if rows.size == 0:
            return
        self.rejected[reason] += int(rows.size) * weight
        ex = self.report.rejected_examples
        for r in rows[:max(0, MAX_EXAMPLES - len(ex))]:
            ex.append(f"row {int(r)}: {reason}")


def _to_utc_us(spec: ImportSpec, st: _State, raw: pd.Series, groups: pd.Series | None,
               row_no: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps as UTC µs and a validity mask; rejections are counted on `st`."""
    n = len(raw)
    text = raw.astype("str").str.strip()
    missing = (raw.isna() | (text == "")).to_numpy(dtype=bool)
    fmt = spec.time_format
    ok = ~missing
    if fmt in UNIX_FORMATS:
        num = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(dtype="float64")
        bad = ok & ~np.isfinite(num)
        ok &= ~bad
        us = np.zeros(n, dtype=np.int64)
        us[ok] = np.round(num[ok] * UNIX_FORMATS[fmt]).astype(np.int64)
        _check_time_failures(spec, st, text, bad, ok)
        st.reject(R_TS_MISSING, row_no[missing], st.ts_weight)
        st.reject(R_TS_UNPARSEABLE, row_no[bad], st.ts_weight)
        return us, ok
    kwargs: dict[str, Any] = {"format": fmt or "ISO8601", "errors": "coerce"}
    values = text.where(~missing)
    try:
        parsed = pd.to_datetime(values, **kwargs)
    except ValueError:  # mixed UTC offsets in one column
        parsed = pd.to_datetime(values, utc=True, **kwargs)
    bad = ok & parsed.isna().to_numpy(dtype=bool)
    _check_time_failures(spec, st, text, bad, ok)
    ok &= ~bad
    if parsed.dt.tz is not None:
        utc = parsed.dt.tz_convert("UTC")
    elif spec.tz == "UTC":
        utc = parsed.dt.tz_localize("UTC")
    else:
        utc, dst_bad = _localize(spec, st, parsed, groups, ok, row_no)
        ok &= ~dst_bad
    us = np.zeros(n, dtype=np.int64)
    good = utc.notna().to_numpy(dtype=bool) & ok
    us[good] = utc[good].dt.tz_localize(None).to_numpy(dtype="datetime64[us]").view(np.int64)
    st.reject(R_TS_MISSING, row_no[missing], st.ts_weight)
    st.reject(R_TS_UNPARSEABLE, row_no[bad], st.ts_weight)
    return us, good


def _check_time_failures(spec: ImportSpec, st: _State, text: pd.Series, bad: np.ndarray,
                         ok: np.ndarray) -> None:
    """On the first chunk, a format that fails on most values is a mistake: stop early."""
    if not st.first_chunk:
        return
    tried = int(ok.sum())
    if tried and bad.sum() > MAX_FIRST_CHUNK_TIME_FAILURES * tried:
        examples = ", ".join(repr(v) for v in text[bad].head(3))
        how = f"--time-format {spec.time_format!r}" if spec.time_format else "ISO 8601"
        raise ImportFailed(
            f"column {spec.time_col!r} does not match {how}: {int(bad.sum())} of the first "
            f"{tried} timestamps fail (e.g. {examples}); give a strptime --time-format "
            "such as '%d/%m/%Y %H:%M:%S', or 'unix' / 'unix_ms'")


def _localize(spec: ImportSpec, st: _State, parsed: pd.Series, groups: pd.Series | None,
              ok: np.ndarray, row_no: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """Naive local times -> UTC; DST folds resolved by the policy, gaps dropped or shifted."""
    tz = spec.tz
    n = len(parsed)
    first = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    problem = np.flatnonzero(first.isna().to_numpy(dtype=bool) & ok)
    dst_bad = np.zeros(n, dtype=bool)
    if problem.size == 0:
        return first.dt.tz_convert("UTC"), dst_bad
    sub = parsed.iloc[problem]
    as_dst = sub.dt.tz_localize(tz, ambiguous=np.ones(problem.size, dtype=bool),
                                nonexistent="NaT")
    gap_mask = as_dst.isna().to_numpy(dtype=bool)
    gap_rows, fold_rows = problem[gap_mask], problem[~gap_mask]
    st.report.nonexistent_times += int(gap_rows.size)
    st.report.ambiguous_times += int(fold_rows.size)
    result = first.copy()
    if gap_rows.size:
        if spec.nonexistent == "error":
            raise ImportFailed(f"row {int(row_no[gap_rows[0]])}: "
                               f"{parsed.iloc[gap_rows[0]]} does not exist in {tz} (DST gap)")
        if spec.nonexistent == "shift_forward":
            result.iloc[gap_rows] = parsed.iloc[gap_rows].dt.tz_localize(
                tz, ambiguous="NaT", nonexistent="shift_forward")
        else:
            dst_bad[gap_rows] = True
            st.reject(R_TS_NONEXISTENT, row_no[gap_rows], st.ts_weight)
    if fold_rows.size:
        policy = spec.ambiguous
        if policy == "error":
            raise ImportFailed(f"row {int(row_no[fold_rows[0]])}: {parsed.iloc[fold_rows[0]]} "
                               f"is ambiguous in {tz} (DST fold); choose --ambiguous")
        if policy == "drop":
            dst_bad[fold_rows] = True
            st.reject(R_TS_AMBIGUOUS, row_no[fold_rows], st.ts_weight)
        else:
            if policy == "infer":
                is_dst = _infer_fold(st, parsed, groups, fold_rows)
            else:
                is_dst = np.full(fold_rows.size, policy == "earliest")
            result.iloc[fold_rows] = parsed.iloc[fold_rows].dt.tz_localize(
                tz, ambiguous=is_dst, nonexistent="NaT")
    return result.dt.tz_convert("UTC"), dst_bad


def _infer_fold(st: _State, parsed: pd.Series, groups: pd.Series | None,
                rows: np.ndarray) -> np.ndarray:
    """Within a stream, in file order, an ambiguous hour is read as daylight time until
    the local clock steps back (e.g. 01:50 then 01:00); from then on it is standard time.
    A repeated identical time without a step back stays a duplicate, not a second hour."""
    out = np.ones(rows.size, dtype=bool)
    local = parsed.iloc[rows].to_numpy(dtype="datetime64[us]").view(np.int64)
    keys = groups.iloc[rows].astype("str").to_numpy() if groups is not None else None
    for k in range(rows.size):
        day = str(parsed.iloc[rows[k]].date())
        state = st.fold.setdefault((keys[k] if keys is not None else "", day), [local[k], False])
        if local[k] < state[0]:
            state[1] = True
        state[0] = local[k]
        out[k] = not state[1]
    return out


def _parse_chunk(st: _State, df: pd.DataFrame) -> _Chunk:
    """One chunk of the file -> new, unique, valid rows (counts go to `st`)."""
    spec, n = st.spec, len(df)
    row_no = np.arange(st.rows_offset + 1, st.rows_offset + n + 1, dtype=np.int64)
    st.rows_offset += n
    targets = spec.targets
    st.report.readings += n * len(targets)
    groups = None
    if spec.asset_col or spec.metric_col:
        keys = [df[c].astype("str") for c in (spec.asset_col, spec.metric_col) if c]
        groups = keys[0] if len(keys) == 1 else keys[0] + "\x1f" + keys[1]
    ts_us, ts_ok = _to_utc_us(spec, st, df[spec.time_col], groups, row_no)
    st.first_chunk = False
    old = ts_ok & (ts_us < st.min_ts_us)
    future = ts_ok & (ts_us > st.max_ts_us)
    st.reject(R_TS_OLD, row_no[old], st.ts_weight)
    st.reject(R_TS_FUTURE, row_no[future], st.ts_weight)
    ts_ok &= ~old & ~future
    row_asset = _asset_column(st, df, row_no, ts_ok) if spec.asset_col else None
    row_metric = _metric_column(st, df, row_no, ts_ok) if spec.metric_col else None
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for t in targets:
        ok = ts_ok.copy()
        if t.asset is not None:
            asset = np.full(n, st.assets.require(t.asset, str(st.tenant_id)), dtype=np.int64)
        else:
            assert row_asset is not None
            asset = row_asset
            ok &= asset >= 0
        if row_metric is not None:
            metric = row_metric
            ok &= metric >= 0
        else:
            metric = np.full(n, st.metric_codes.setdefault(t.metric, len(st.metric_codes)),
                             dtype=np.int64)
        value = _values(st, df[t.column], row_no, ok)
        ok &= ~np.isnan(value)
        sel = np.flatnonzero(ok)
        parts.append((asset[sel], metric[sel], ts_us[sel], value[sel], row_no[sel]))
    asset = np.concatenate([p[0] for p in parts])
    metric = np.concatenate([p[1] for p in parts])
    ts = np.concatenate([p[2] for p in parts])
    value = np.concatenate([p[3] for p in parts])
    keep = _dedupe(st, asset, metric, ts, value)
    asset, metric, ts, value = asset[keep], metric[keep], ts[keep], value[keep]
    names = list(st.metric_codes)
    m = keep.sum()
    rows = Rows(tenant=np.frombuffer(st.tenant_id.bytes * int(m), dtype="V16"),
                asset=st.assets.id_bytes[asset] if m else np.empty(0, dtype="V16"),
                metric_codes=metric.astype(np.int32), metric_names=names, ts_us=ts,
                value=value, quality=np.full(int(m), spec.quality, dtype=np.int16))
    return _Chunk(rows=rows, rows_read=n)


def _asset_column(st: _State, df: pd.DataFrame, row_no: np.ndarray,
                  ts_ok: np.ndarray) -> np.ndarray:
    """Per-row asset index from --asset-col: -1 for missing, unknown or ambiguous refs."""
    assert st.spec.asset_col is not None
    raw = df[st.spec.asset_col]
    text = raw.astype("str").str.strip()
    codes, uniques = pd.factorize(text.where(raw.notna() & (text != "")))
    lut = np.array([st.assets.lookup(str(u)) for u in uniques] + [-3], dtype=np.int64)
    idx = lut[codes]  # code -1 (missing) picks the sentinel -3
    weight = sum(1 for t in st.spec.targets if t.asset is None)
    st.reject(R_ASSET_MISSING, row_no[ts_ok & (idx == -3)], weight)
    st.reject(R_ASSET_UNKNOWN, row_no[ts_ok & (idx == -1)], weight)
    st.reject(R_ASSET_AMBIGUOUS, row_no[ts_ok & (idx == -2)], weight)
    for j, u in enumerate(uniques):
        if lut[j] == -1:
            st.unknown[str(u)] += int(((codes == j) & ts_ok).sum()) * weight
    return np.where(idx >= 0, idx, -1)


def _metric_column(st: _State, df: pd.DataFrame, row_no: np.ndarray,
                   ts_ok: np.ndarray) -> np.ndarray:
    assert st.spec.metric_col is not None
    raw = df[st.spec.metric_col]
    codes, uniques = pd.factorize(raw.astype("str").str.strip().where(raw.notna()))
    lut = np.array([st.metric_codes.setdefault(str(u), len(st.metric_codes))
                    if METRIC_RE.match(str(u)) else -2 for u in uniques] + [-1],
                   dtype=np.int64)
    idx = lut[codes]
    st.reject(R_METRIC_MISSING, row_no[ts_ok & (idx == -1)])
    st.reject(R_METRIC_INVALID, row_no[ts_ok & (idx == -2)])
    return np.where(idx >= 0, idx, -1)


def _values(st: _State, col: pd.Series, row_no: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """float64 values, NaN where rejected (missing, not a number, infinite)."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        value = col.to_numpy(dtype="float64", na_value=np.nan, copy=True)
        missing = np.isnan(value)
        notnum = np.zeros(len(col), dtype=bool)
    else:
        text = col.astype("str").str.strip()
        missing = (col.isna() | (text == "")).to_numpy(dtype=bool)
        value = pd.to_numeric(text.where(~missing), errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan, copy=True)
        notnum = np.isnan(value) & ~missing
    inf = np.isinf(value)
    st.reject(R_VALUE_MISSING, row_no[ok & missing])
    st.reject(R_VALUE_NAN, row_no[ok & notnum])
    st.reject(R_VALUE_INF, row_no[ok & inf])
    value[inf] = np.nan
    return value


def _dedupe(st: _State, asset: np.ndarray, metric: np.ndarray, ts: np.ndarray,
            value: np.ndarray) -> np.ndarray:
    """Keep the first reading of each (asset, metric, ts) in the whole file; the mask."""
    keep = np.zeros(asset.size, dtype=bool)
    if asset.size == 0:
        return keep
    stream = asset * (len(st.metric_codes) + 1) + metric
    order = np.argsort(stream, kind="stable")
    bounds = np.flatnonzero(np.diff(stream[order])) + 1
    for grp in np.split(order, bounds):
        key = (int(asset[grp[0]]), int(metric[grp[0]]))
        t, v = ts[grp], value[grp]
        uniq, first, inverse = np.unique(t, return_index=True, return_inverse=True)
        dup_in_chunk = t.size - uniq.size
        conflicting = int((v != v[first][inverse]).sum())
        u_v = v[first]
        seen_t = st.seen_ts.get(key)
        if seen_t is not None and seen_t.size:
            seen_v = st.seen_val[key]
            pos = np.minimum(np.searchsorted(seen_t, uniq), seen_t.size - 1)
            hit = seen_t[pos] == uniq
            conflicting += int((hit & (seen_v[pos] != u_v)).sum())
            dup_prev = int(hit.sum())
        else:
            hit = np.zeros(uniq.size, dtype=bool)
            seen_t, seen_v = np.empty(0, np.int64), np.empty(0, np.float64)
            dup_prev = 0
        new_t, new_v = uniq[~hit], u_v[~hit]
        merged_t = np.concatenate([seen_t, new_t])
        merged_v = np.concatenate([seen_v, new_v])
        o = np.argsort(merged_t, kind="stable")
        st.seen_ts[key], st.seen_val[key] = merged_t[o], merged_v[o]
        st.report.duplicates_in_file += dup_in_chunk + dup_prev
        st.report.duplicates_conflicting += conflicting
        keep[grp[first[~hit]]] = True
    return keep


# ---------------------------------------------------------------------------- gaps


def _stream_reports(st: _State) -> list[StreamReport]:
    names = list(st.metric_codes)
    out = []
    for (a, m), t in sorted(st.seen_ts.items(), key=lambda kv: (st.assets.labels[kv[0][0]],
                                                                names[kv[0][1]])):
        interval: float | None = st.spec.interval_s
        diffs = np.diff(t) / 1e6
        gaps = missing = 0
        largest: float | None = None
        after: datetime | None = None
        if diffs.size:
            if interval is None:
                steps, counts = np.unique(diffs, return_counts=True)
                interval = float(steps[np.argmax(counts)])
            over = diffs > GAP_TOLERANCE * interval
            gaps = int(over.sum())
            missing = int((np.rint(diffs[over] / interval) - 1).clip(min=1).sum())
            if gaps:
                j = int(np.argmax(diffs))
                largest, after = float(diffs[j]), _dt(int(t[j]))
        out.append(StreamReport(
            asset_id=st.assets.ids[a], asset=st.assets.labels[a], metric=names[m],
            readings=int(t.size), first_ts=_dt(int(t[0])) if t.size else None,
            last_ts=_dt(int(t[-1])) if t.size else None, interval_s=interval, gaps=gaps,
            missing_intervals=missing, largest_gap_s=largest, largest_gap_after=after))
    return out


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, tz=UTC)


# ---------------------------------------------------------------------------- writing


async def _byte_chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start:start + size])


STAGE = "telemetry_import_stage"
# Each hypertable chunk a transaction writes holds locks on the chunk and its indexes
# until commit; a long history in one transaction (I-94: 2,200 daily chunks) exhausts
# the server's lock table (max_locks_per_transaction), so a slice spans at most this many.
MAX_HYPERTABLE_CHUNKS_PER_TX = 128
DEFAULT_CHUNK_INTERVAL_US = 86_400_000_000


async def hypertable_interval_us(conn: asyncpg.Connection) -> int:
    """The telemetry hypertable's chunk interval (TimescaleDB), in microseconds."""
    try:
        seconds = await conn.fetchval(
            "select extract(epoch from time_interval) from timescaledb_information.dimensions "
            "where hypertable_name = 'telemetry' and column_name = 'ts'")
    except asyncpg.PostgresError:
        seconds = None
    return int(float(seconds) * 1_000_000) if seconds else DEFAULT_CHUNK_INTERVAL_US


def time_slices(rows: Rows, *, interval_us: int,
                max_chunks: int = MAX_HYPERTABLE_CHUNKS_PER_TX) -> list[Rows]:
    """`rows` in time order, cut so that no slice touches more than `max_chunks` chunks."""
    if not len(rows):
        return []
    ordered = rows.take(np.argsort(rows.ts_us, kind="stable"))
    bucket = ordered.ts_us // interval_us
    ordinal = np.concatenate([[0], np.cumsum(np.diff(bucket) != 0)])
    cuts = np.flatnonzero(np.diff(ordinal // max_chunks)) + 1
    return [ordered.take(sel) for sel in np.split(np.arange(len(ordered)), cuts)]


async def write_chunk(conn: asyncpg.Connection, rows: Rows, *, dry_run: bool = False,
                      direct: bool = True) -> int:
    """Store `rows` (unique keys) in one transaction; returns how many were new.

    `direct` COPYs straight into the hypertable (the fastest path, right for a history
    not stored yet); when a row is already stored that COPY fails and is rolled back
    to a savepoint, and the rows go through a temporary table and
    `INSERT ... ON CONFLICT DO NOTHING` instead, which is also the path when
    `direct` is false. A dry run does the same and rolls back.
    """
    if not len(rows):
        return 0
    data = pgcopy.encode(tenant=rows.tenant, asset=rows.asset, metric_codes=rows.metric_codes,
                         metric_names=rows.metric_names, ts_us=rows.ts_us, value=rows.value,
                         quality=rows.quality)
    tr = conn.transaction()
    await tr.start()
    try:
        inserted = -1
        if direct:
            try:
                async with conn.transaction():  # a savepoint: the fallback keeps the outer one
                    await conn.copy_to_table("telemetry", source=_byte_chunks(data),
                                             columns=list(pgcopy.COLUMNS), format="binary")
                inserted = len(rows)
            except asyncpg.UniqueViolationError:
                inserted = -1
        if inserted < 0:
            await conn.execute(f"create temp table if not exists {STAGE} "
                               "(like telemetry including defaults) on commit delete rows")
            await conn.copy_to_table(STAGE, source=_byte_chunks(data),
                                     columns=list(pgcopy.COLUMNS), format="binary")
            status = await conn.execute(
                "insert into telemetry (tenant_id, asset_id, metric, ts, value, quality) "
                f"select tenant_id, asset_id, metric, ts, value, quality from {STAGE} "
                "on conflict do nothing")
            inserted = int(status.rsplit(" ", 1)[-1])
    except BaseException:
        await tr.rollback()
        raise
    if dry_run:
        await tr.rollback()
    else:
        await tr.commit()
    return inserted


# ---------------------------------------------------------------------------- driver


async def run_import(spec: ImportSpec, *, conn: asyncpg.Connection, tenant_id: uuid.UUID,
                     min_ts_us: int | None = None, max_future_s: int = 300,
                     on_progress: ProgressFn | None = None) -> ImportReport:
    """Import `spec.path` for one tenant over `conn` (the ingest role); see the module doc.

    Parsing the next chunk (a worker thread) overlaps writing the current one. Mapping
    errors, unknown constant assets and a wrong time format stop the import before the
    first write; a database error stops it after the last committed chunk (a re-run
    skips what is stored). Slices go straight in by COPY until one meets stored rows,
    then through the staging table until one finds nothing stored.
    """
    start = time.perf_counter()
    report = ImportReport(file=str(spec.path), tenant_id=tenant_id, dry_run=spec.dry_run)
    assets = await load_assets(conn, tenant_id)
    for t in spec.targets:  # constant assets must exist in this tenant before anything
        if t.asset is not None:
            assets.require(t.asset, str(tenant_id))
    if min_ts_us is None:
        min_ts_us = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    st = _State(spec=spec, tenant_id=tenant_id, assets=assets, min_ts_us=min_ts_us,
                max_ts_us=time.time_ns() // 1000 + max_future_s * 1_000_000, report=report,
                ts_weight=len(spec.targets))
    interval_us = await hypertable_interval_us(conn)
    direct = True
    source, _ = await asyncio.to_thread(_open_source, spec)
    try:
        def next_chunk() -> _Chunk | None:
            df = next(source.chunks, None)
            return None if df is None else _parse_chunk(st, df)

        pending = asyncio.ensure_future(asyncio.to_thread(next_chunk))
        while True:
            chunk = await pending
            if chunk is None:
                break
            pending = asyncio.ensure_future(asyncio.to_thread(next_chunk))
            try:
                for part in time_slices(chunk.rows, interval_us=interval_us):
                    new = await write_chunk(conn, part, dry_run=spec.dry_run, direct=direct)
                    report.inserted += new
                    direct = new == len(part)
            except BaseException:
                await asyncio.gather(pending, return_exceptions=True)
                raise
            report.rows_read += chunk.rows_read
            report.chunks += 1
            if on_progress is not None:
                on_progress(Progress(done=source.position(), total=source.total,
                                     rows=report.rows_read, inserted=report.inserted))
            log.debug("import chunk committed", extra={"chunk": report.chunks,
                                                       "rows": chunk.rows_read,
                                                       "inserted": report.inserted})
    finally:
        await asyncio.to_thread(source.close)
    unique = sum(int(t.size) for t in st.seen_ts.values())
    report.already_stored = unique - report.inserted
    report.rejected = dict(st.rejected.most_common())
    report.unknown_assets = dict(st.unknown.most_common(MAX_EXAMPLES))
    report.streams = _stream_reports(st)
    report.elapsed_s = time.perf_counter() - start
    report.rows_per_s = report.rows_read / report.elapsed_s if report.elapsed_s else 0.0
    report.readings_per_s = report.readings / report.elapsed_s if report.elapsed_s else 0.0
    log.info("telemetry import done", extra={"file": spec.path.name, "tenant": str(tenant_id),
                                             "rows": report.rows_read,
                                             "inserted": report.inserted,
                                             "dry_run": spec.dry_run})
    return report
