"""Smart meters: consumption derived from cumulative registers, never negative.

A meter reports a register that only grows. Between two readings the consumption is
the register's increment, except where the register misbehaves:

* jitter: a drop within `rel_tolerance` of the register (or `abs_tolerance`) is noise;
  the reference holds at the highest value seen, so the rise back is not counted twice;
* glitch: one reading out of line with both neighbours (a drop, or a spike up, that the
  next reading reverts) is skipped and consumption measured across it;
* rollover: with `rollover` (the register's modulus, e.g. 100000 for a 99999.9 dial) a
  drop of more than half the modulus is a wrap: the increment is `v + rollover - ref`;
* reset / replacement: any other drop starts a new segment; the step's consumption is
  unknown and counted as 0, then increments are measured from the new register value.

`derive_consumption` does this over numpy arrays for one series. The ingest adapter
(`MeterAdapter`, installed on the `Ingestor`) applies it to assets whose metric spec
says `"cumulative": true` and writes `<metric>_consumption` beside the register, in the
same commit. Its per-series state (reference register, a drop awaiting the next reading)
lives in process memory; on a miss or an out-of-order batch it reads the last stored
register from PostgreSQL, so it works across batches, processes and restarts.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from civitas_ray.telemetry.directory import TenantAssets
from civitas_ray.telemetry.parse import ParsedReadings

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
CONSUMPTION_SUFFIX = "_consumption"
REL_TOLERANCE = 1e-3
ABS_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class RegisterState:
    """Where a series stands after a batch: the reference register (the highest value
    of the current segment), its time, and a trailing drop not yet judged."""

    ref: float
    ts_us: int
    pending: float | None = None


@dataclass(frozen=True, slots=True)
class Derived:
    consumption: F64  # one value per input reading, >= 0
    resets: int
    rollovers: int
    glitches: int
    state: RegisterState | None


def _tol(ref: F64, rel: float, abs_: float) -> F64:
    return np.maximum(rel * np.abs(ref), abs_)


def derive_consumption(values: npt.ArrayLike, ts_us: npt.ArrayLike | None = None, *,
                       state: RegisterState | None = None, rollover: float | None = None,
                       rel_tolerance: float = REL_TOLERANCE,
                       abs_tolerance: float = ABS_TOLERANCE) -> Derived:
    """Non-negative consumption per reading of one register series (sorted by time).

    `state` carries the previous batch's end; the returned state carries this one's.
    A drop on the last reading is held as `pending` (its consumption is 0) so that the
    next batch can tell a glitch (it comes back) from a reset (it does not).
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    ts = np.zeros(n, np.int64) if ts_us is None else np.asarray(ts_us, dtype=np.int64)
    if n == 0:
        return Derived(np.zeros(0), 0, 0, 0, state)
    if not np.all(np.isfinite(x)):
        raise ValueError("register values must be finite")
    if rollover is not None and rollover <= 0:
        raise ValueError("rollover must be positive")
    head = [] if state is None else [state.ref] + ([] if state.pending is None
                                                   else [state.pending])
    k = len(head)
    full = np.concatenate([np.asarray(head, dtype=np.float64), x])
    m = full.size
    # Glitches: an interior reading outside the band its two neighbours agree on.
    glitch = np.zeros(m, dtype=bool)
    if m >= 3:
        a, b, c = full[:-2], full[1:-1], full[2:]
        tol = _tol(a, rel_tolerance, abs_tolerance)
        agree = c >= a - tol
        if rollover is not None:  # a wrap between neighbours is not agreement
            agree &= (a - c) <= rollover / 2
        glitch[1:-1] = agree & ((b < a - tol) | (b > c + tol))
    glitch[0] = False  # the stored reference is trusted
    # Carry the last good value over glitches (a forward fill by index).
    idx = np.where(glitch, 0, np.arange(m))
    np.maximum.accumulate(idx, out=idx)
    clean = full[idx]
    d = np.diff(clean)
    prev = clean[:-1]
    tol = _tol(prev, rel_tolerance, abs_tolerance)
    drop = d < -tol
    wrap = drop & (rollover is not None) & (-d > (rollover or np.inf) / 2)
    reset = drop & ~wrap
    # Unwrap rollovers, then split at resets; each segment's effective register is its
    # running maximum (so jitter never counts twice), offset so segments never mix.
    unwrapped = clean + np.concatenate([[0.0], np.cumsum(wrap) * (rollover or 0.0)])
    seg = np.concatenate([[0], np.cumsum(reset)])
    span = float(unwrapped.max() - unwrapped.min()) + 1.0
    lifted = unwrapped + seg * span
    eff = np.maximum.accumulate(lifted)
    cons = np.diff(eff)
    cons[reset] = 0.0
    cons = np.maximum(cons, 0.0)
    cons[glitch[1:]] = 0.0
    out = cons[k - 1:] if k else np.concatenate([[0.0], cons])
    # The state after the batch: a trailing drop waits to be judged by the next one.
    start = max(k - 1, 0)
    resets = int(reset[start:].sum())
    if k == 2 and reset[0]:
        resets += 1  # the previous batch's pending drop turned out to be a reset

    def ref_at(i: int) -> float:  # the segment's running maximum, in register units
        return float(eff[i] - seg[i] * span - (unwrapped[i] - clean[i]))

    if m >= 2 and bool(reset[-1]):
        prev_ts = int(ts[-2]) if n >= 2 else (state.ts_us if state else int(ts[-1]))
        new_state = RegisterState(ref_at(m - 2), prev_ts, pending=float(full[-1]))
        resets -= 1
    else:
        new_state = RegisterState(ref_at(m - 1), int(ts[-1]))
    return Derived(out.astype(np.float64), resets, int(wrap[start:].sum()),
                   int(glitch[max(k - 1, 1):].sum()), new_state)


@dataclass(frozen=True, slots=True)
class _Series:
    row: int  # asset row in TenantAssets
    metric: str
    rollover: float | None


class MeterAdapter:
    """Adds `<metric>_consumption` readings for cumulative registers to an ingest batch.

    Installed on the `Ingestor` (`install`); it runs before the batch is submitted, so
    the derived readings share the register's commit. State: `max_series` register
    states in memory (LRU); rebuilt from the last stored register when missing.
    """

    def __init__(self, *, max_series: int = 100_000) -> None:
        self._state: OrderedDict[tuple[uuid.UUID, str], RegisterState] = OrderedDict()
        self._max = max_series

    def forget(self) -> None:
        self._state.clear()

    async def derive(self, *, pool: asyncpg.Pool, assets: TenantAssets,
                     parsed: ParsedReadings, rows_idx: np.ndarray,
                     sel: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray,
                                               np.ndarray]:
        """Derived readings for the accepted ones (`sel`): asset rows, metric names,
        ts_us, values, quality. Empty when the batch holds no cumulative register."""
        groups: dict[tuple[int, str], list[int]] = {}
        specs: dict[tuple[int, str], _Series] = {}
        metric = parsed.metric
        for i in sel.tolist():
            row = int(rows_idx[i])
            spec = assets.metrics[row].get(metric[i]) if assets.metrics[row] else None
            if not isinstance(spec, dict) or not spec.get("cumulative"):
                continue
            key = (row, metric[i])
            if key not in specs:
                ro = spec.get("rollover")
                specs[key] = _Series(row, metric[i], float(ro) if ro else None)
            groups.setdefault(key, []).append(i)
        empty: tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray] = (
            np.empty(0, np.int64), [], np.empty(0, np.int64), np.empty(0),
            np.empty(0, np.int16))
        if not groups:
            return empty
        ts_all, val_all = parsed.ts_us, parsed.value
        firsts = {key: int(ts_all[ix].min()) for key, ix in groups.items()}
        stale = [key for key in groups
                 if (st := self._state.get((assets.ids[key[0]], key[1]))) is None
                 or st.ts_us >= firsts[key]]
        if stale:
            await self._load(pool, assets, stale, firsts)
        out_rows: list[np.ndarray] = []
        out_names: list[str] = []
        out_ts: list[np.ndarray] = []
        out_val: list[np.ndarray] = []
        out_q: list[np.ndarray] = []
        for key, ix_list in groups.items():
            ix = np.asarray(ix_list, dtype=np.int64)
            ix = ix[np.argsort(ts_all[ix], kind="stable")]
            ts = ts_all[ix]
            keep = np.concatenate([[True], np.diff(ts) > 0])  # one reading per instant
            ix, ts = ix[keep], ts[keep]
            asset_id = assets.ids[key[0]]
            skey = (asset_id, key[1])
            derived = derive_consumption(val_all[ix], ts, state=self._state.get(skey),
                                         rollover=specs[key].rollover)
            if derived.state is not None:
                self._state[skey] = derived.state
                self._state.move_to_end(skey)
            if derived.resets or derived.glitches:
                log.info("meter register anomalies", extra={
                    "asset_id": str(asset_id), "metric": key[1], "resets": derived.resets,
                    "glitches": derived.glitches, "rollovers": derived.rollovers})
            out_rows.append(np.full(ix.size, key[0], np.int64))
            out_names.extend([key[1] + CONSUMPTION_SUFFIX] * ix.size)
            out_ts.append(ts)
            out_val.append(derived.consumption)
            out_q.append(parsed.quality[ix])
        while len(self._state) > self._max:
            self._state.popitem(last=False)
        return (np.concatenate(out_rows), out_names, np.concatenate(out_ts),
                np.concatenate(out_val), np.concatenate(out_q).astype(np.int16))

    async def _load(self, pool: asyncpg.Pool, assets: TenantAssets,
                    keys: list[tuple[int, str]], firsts: dict[tuple[int, str], int]) -> None:
        """The last stored register before each series' batch (the reference to resume
        from); a series with none starts fresh (its first reading counts 0)."""
        for key in keys:
            asset_id = assets.ids[key[0]]
            row: Any = await pool.fetchrow(
                "select value, ts from telemetry where asset_id = $1 and metric = $2 "
                "and ts < to_timestamp($3::float8 / 1e6) order by ts desc limit 1",
                asset_id, key[1], float(firsts[key]))
            skey = (asset_id, key[1])
            if row is None:
                self._state.pop(skey, None)
            else:
                ts_us = int(row["ts"].timestamp() * 1_000_000)
                self._state[skey] = RegisterState(float(row["value"]), ts_us)


def install(ingestor: Any) -> MeterAdapter:
    """Attach the meter adapter to an Ingestor once."""
    existing: MeterAdapter | None = getattr(ingestor, "meters", None)
    if existing is not None:
        return existing
    adapter = MeterAdapter()
    ingestor.meters = adapter
    return adapter
