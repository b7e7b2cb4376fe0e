"""DataQualityAgent: classification on real city series, the proposal, persistence, and
the explain node with the product's extractive backend (no model, no database)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from langgraph.graph import END
from langgraph.runtime import Runtime

from civitas_ray.ai.agents import data_quality as dq
from civitas_ray.ai.agents.base import AgentContext
from civitas_ray.ai.llm import ExtractiveLLM
from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.streams.quality import FlagId, MetricSpec, QualityMonitor
from civitas_ray.streams.timebase import US_PER_S, iso_one
from tests.unit.city_series import daiad_meters, tetouan_power

pytestmark = pytest.mark.unit
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real_register_drop(data_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """A DAIAD meter window around a register drop the stream monitor saw on the meter's
    whole history: (ts, register, index of the dropped reading)."""
    keys, ts, reg = daiad_meters(data_dir)
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        order = np.argsort(ts[idx], kind="stable")
        t, r = ts[idx][order], reg[idx][order]
        keep = np.r_[t[1:] != t[:-1], True]  # one reading per instant
        t, r = t[keep], r[keep]
        upd = QualityMonitor(MetricSpec(cumulative=True)).update(t, r, interval_s=3600.0)
        for ev in upd.raised:
            if ev.flag == FlagId.COUNTER_RESET:
                i = int(np.searchsorted(t, ev.since_us))
                if i >= 150 and i + 10 <= t.size:
                    return t[i - 150:i + 10], r[i - 150:i + 10], 150
    raise AssertionError("no register drop in the DAIAD data")


def tetouan_window(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    s = tetouan_power(DATA)
    return s.ts_us[1000:1000 + n].copy(), s.values[1000:1000 + n].copy()


def test_real_daiad_register_glitch_is_a_reverted_reset_to_quarantine() -> None:
    ts, reg, at = real_register_drop(DATA)
    a = dq.analyse_series(ts, reg, MetricSpec(cumulative=True), now_us=int(ts[-1]) + 1)
    assert a["issue"] == "reset"
    last = a["evidence"]["last"]
    assert last["since"] == iso_one(int(ts[at]))
    assert last["detail"]["after"] == pytest.approx(reg[at])
    assert a["evidence"]["outcome"] == "reverted"  # the real meter came back
    p = dq.propose("reset", a["evidence"])
    assert p is not None and p["action"] == "quarantine" and p["readings"] == [last["since"]]


def test_register_restarting_from_zero_is_a_reset_to_recalibrate() -> None:
    ts, reg, at = real_register_drop(DATA)
    restarted = reg.copy()
    restarted[at:] = reg[at:] - reg[at] + 1.0  # the real increments, from a new register
    a = dq.analyse_series(ts, restarted, MetricSpec(cumulative=True), now_us=int(ts[-1]) + 1)
    assert a["issue"] == "reset" and a["evidence"]["outcome"] == "reset"
    assert a["evidence"]["last"]["since"] == iso_one(int(ts[at]))
    assert dq.propose("reset", a["evidence"])["action"] == "recalibrate"
    pending = dq.analyse_series(ts[:at + 1], restarted[:at + 1], MetricSpec(cumulative=True),
                                now_us=int(ts[at]) + 1)
    assert pending["evidence"]["outcome"] == "pending"


def test_frozen_tail_of_real_power_series_is_stuck_and_quarantined_from_its_start() -> None:
    ts, vals = tetouan_window()
    vals[270:] = vals[270]
    a = dq.analyse_series(ts, vals, MetricSpec(), now_us=int(ts[-1]) + 1)
    assert a["issue"] == "stuck"
    assert a["evidence"]["since"] == iso_one(int(ts[270]))
    assert "stuck" in a["active"]
    p = dq.propose(a["issue"], a["evidence"])
    assert p is not None and p["action"] == "quarantine" and p["from"] == iso_one(int(ts[270]))


def test_silent_stream_is_a_gap_and_the_sound_series_has_no_issue() -> None:
    ts, vals = tetouan_window()
    clean = dq.analyse_series(ts, vals, MetricSpec(), now_us=int(ts[-1]) + 1)
    assert clean["issue"] is None and clean["active"] == []
    interval = float(np.median(np.diff(ts))) / US_PER_S
    later = int(ts[-1] + 10 * interval * US_PER_S)
    gap = dq.analyse_series(ts, vals, MetricSpec(), now_us=later)
    assert gap["issue"] == "gap"
    assert gap["evidence"]["detail"]["silent_s"] == pytest.approx(10 * interval)


def test_a_steady_ramp_on_the_real_series_is_drift() -> None:
    ts, vals = tetouan_window(400)
    span = float(vals.max() - vals.min())
    ramp = np.linspace(0.0, 5 * span, vals.size)
    a = dq.analyse_series(ts, vals + ramp, MetricSpec(), now_us=int(ts[-1]) + 1)
    assert a["issue"] == "drift"
    assert a["evidence"]["shift"] > 0 and a["evidence"]["trend_rho"] >= dq.CONFIG.drift_rho
    assert dq.propose("drift", a["evidence"])["action"] == "recalibrate"
    assert dq.drift(ts, vals, dq.CONFIG) is None  # the plain daily cycle is not drift


def test_persistence_counts_consecutive_checks_or_duration() -> None:
    cfg = dq.DataQualityConfig(persist_checks=3, persist_s=3600)
    assert not dq.persists("stuck", ["stuck"], 10, cfg)
    assert dq.persists("stuck", ["stuck", "stuck", None], 10, cfg)
    assert not dq.persists("stuck", [None, "stuck", "stuck"], 10, cfg)  # streak broken
    assert dq.persists("gap", [], 7200, cfg)
    assert not dq.persists(None, ["stuck"] * 5, 1e9, cfg)


async def test_analyse_node_then_route_and_explain_with_extractive_llm() -> None:
    ts, vals = tetouan_window()
    vals[270:] = vals[270]
    state: dq.DataQualityState = {
        "asset_id": str(uuid.uuid4()), "metric": "power", "as_of": iso_one(int(ts[-1]) + 1),
        "asset_name": "Zone 1 feeder", "spec": {}, "ts_us": ts.tolist(),
        "values": vals.tolist(), "prior": ["stuck"]}
    state.update(await dq.analyse(state))  # type: ignore[typeddict-item]
    assert state["issue"] == "stuck" and state["persistent"] is True
    assert dq._route(state) == "explain"
    ctx = AgentContext(tenant_id=uuid.uuid4(), actor=SYSTEM_ACTOR, llm=ExtractiveLLM(),
                       extras={"search": False})
    out = await dq.explain(state, Runtime(context=ctx))
    ex = out["explanation"]
    assert ex["mode"] == "extractive" and ex["backend"] == "extractive"
    assert "issue: stuck" in ex["text"] and "proposal.action: quarantine" in ex["text"]
    assert out["cited"] == []
    state.update(out)  # type: ignore[typeddict-item]
    result = dq.result_of(state, ctx)
    assert result["output"]["issue"] == "stuck" and result["mode"] == "extractive"
    clean: dq.DataQualityState = {**state, "issue": None}  # type: ignore[typeddict-item]
    assert dq._route(clean) == END
