"""Recommender nodes without a database: candidates, forecast risk, ranking, explanations.

Forecast points come from a real series (I-94 traffic volume, the last day of the file)
and explanations from the real ExtractiveLLM.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from langgraph.runtime import Runtime

from civitas_ray.ai.agents import recommender
from civitas_ray.ai.agents.base import AgentContext
from civitas_ray.ai.llm.base import Passage
from civitas_ray.ai.llm.extractive import LABEL, ExtractiveLLM
from civitas_ray.audit.service import SYSTEM_ACTOR

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def day(data_dir: Path) -> list[dict[str, Any]]:
    """24 hourly points of real I-94 volume, shaped like forecast points."""
    from civitas_ray.ml import datasets

    y = datasets.i94_traffic(data_dir)["traffic_volume"].dropna().iloc[-24:]
    return [{"ts": ts.isoformat(), "value": float(v), "lower": float(v) * 0.9,
             "upper": float(v) * 1.1} for ts, v in y.items()]


def incident(severity: str, domain: str = "utilities", assignee: str | None = None,
             number: int = 1) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "number": number, "title": f"{domain} {severity}",
            "domain": domain, "severity": severity, "status": "open", "zone_id": None,
            "asset_id": None, "assignee_id": assignee, "opened_at": "2026-11-30T08:00:00+00:00"}


def test_first_crossing_and_forecast_risk_on_a_real_day(day: list[dict[str, Any]]) -> None:
    values = [p["value"] for p in day]
    mid = (max(values) + min(values)) / 2
    hit = recommender.first_crossing(day, ">", mid)
    assert hit is not None and hit["value"] > mid
    assert all(p["value"] <= mid for p in day[:day.index(hit)])
    assert recommender.first_crossing(day, ">", max(values)) is None
    assert recommender.first_crossing(day, "<", min(values) + 1)["value"] < min(values) + 1
    assert recommender.first_crossing(day, "~", 0) is None

    rule = {"id": "r1", "name": "high", "condition": {"type": "threshold", "op": ">",
                                                      "threshold": mid}}
    risk = recommender.forecast_risk(day, [rule])
    assert risk["risk"] == 1.0 and risk["crossing"]["ts"] == hit["ts"]
    assert risk["peak"]["value"] == max(values)
    anomaly = {"id": "r2", "name": "odd", "condition": {"type": "anomaly", "min_score": 4}}
    no_rule = recommender.forecast_risk(day, [anomaly])
    assert "crossing" not in no_rule
    ratio = max(values) / (sum(values) / len(values))
    # I-94 has a strong daily cycle: its peak stands well above the daily mean.
    assert ratio >= recommender.PEAK_RATIO and 0 < no_rule["risk"] <= 0.6
    flat = [{**p, "value": 100.0} for p in day]
    assert recommender.forecast_risk(flat, [])["risk"] == 0.0
    assert recommender.forecast_risk([], [rule]) == {"risk": 0.0}


def test_propose_builds_candidates_by_rule(day: list[dict[str, Any]]) -> None:
    crit, minor = incident("critical"), incident("minor", "mobility", number=2)
    owned = incident("minor", "mobility", assignee=str(uuid.uuid4()), number=3)
    info = incident("info", number=4)
    dq = incident("minor", "data_quality", number=5)
    alerts = [
        {"id": "a1", "incident_id": crit["id"], "condition_type": "threshold",
         "dedup_key": "k1", "asset_id": None, "zone_id": None, "metric": "flow",
         "severity": "critical"},
        {"id": "a2", "incident_id": None, "condition_type": "data_quality", "dedup_key": "k2",
         "asset_id": "asset-9", "zone_id": None, "metric": "volume", "severity": "minor"},
    ]
    rule = {"id": "r", "name": "high", "condition": {"type": "threshold", "op": ">",
                                                     "threshold": 0.0}}
    fc = {"subject_key": "zone:z1:volume", "metric": "volume", "zone_id": "z1",
          "asset_id": None, "model": "traffic", "version": 1, "model_version_id": "mv",
          "served_by": "in-process", "points": day, **recommender.forecast_risk(day, [rule])}
    out = recommender.propose(incidents=[crit, minor, owned, info, dq], alerts=alerts,
                              forecasts=[fc, {**fc, "subject_key": "zone:z2:volume",
                                              "risk": 0.0}], zone_id="z1")
    by_key = {c["key"]: c for c in out}
    assert set(by_key) == {
        f"dispatch_crew:incident:{crit['id']}", f"assign_owner:incident:{minor['id']}",
        f"data_quality_fix:incident:{dq['id']}", "data_quality_fix:alert:k2",
        "preposition:zone:z1:volume"}
    dispatch = by_key[f"dispatch_crew:incident:{crit['id']}"]
    assert dispatch["evidence"]["alert_ids"] == ["a1"]
    assert "trench" in dispatch["action"] and "#1" in dispatch["title"]
    pre = by_key["preposition:zone:z1:volume"]
    assert pre["forecast_risk"] == 1.0 and pre["evidence"]["forecast"]["crossing"]["ts"] == \
        day[0]["ts"]
    assert pre["zone_id"] == "z1" and len(pre["evidence"]["forecast"]["points"]) == len(day)


def _candidate(kind: str, severity: str, verdict: str, risk: float = 0.0) -> dict[str, Any]:
    return {"kind": kind, "key": f"{kind}:{severity}:{verdict}", "severity": severity,
            "forecast_risk": risk, "policy": {"verdict": verdict, "citations": []}}


def test_rank_orders_by_severity_risk_and_policy() -> None:
    a = _candidate("dispatch_crew", "critical", "compliant")
    b = _candidate("dispatch_crew", "critical", "non_compliant")
    c = _candidate("assign_owner", "minor", "compliant")
    d = _candidate("preposition", "major", "unclear", risk=1.0)
    ranked = recommender.rank_candidates([c, b, d, a])
    assert [x["key"] for x in ranked] == [d["key"], a["key"], c["key"], b["key"]]
    assert [x["rank"] for x in ranked] == [1, 2, 3, 4]
    assert [x["score"] for x in ranked] == sorted((x["score"] for x in ranked), reverse=True)
    sa, parts = recommender.score(a)
    sb, _ = recommender.score(b)
    assert sb == pytest.approx(sa * recommender.POLICY_FACTOR["non_compliant"], abs=1e-4)
    assert parts == {"severity": 1.0, "forecast": 0.0, "kind": 1.0, "policy_factor": 1.0}
    # A non-compliant action is demoted, not dropped: operators see why it ranks low.
    assert len(ranked) == 4


async def test_explain_node_with_the_extractive_backend() -> None:
    ctx = AgentContext(tenant_id=uuid.uuid4(), actor=SYSTEM_ACTOR, llm=ExtractiveLLM())
    passage = Passage(id="p1", text="It shall be unlawful for any person to make any cut or "
                      "trench in any highway without a permit so to do from the Mayor.",
                      title="DC Code § 9-431.01",
                      citation={"section_id": "DC Code § 9-431.01"})
    inc = incident("critical")
    c = {**_candidate("dispatch_crew", "critical", "unclear"),
         "title": "Dispatch a field crew to incident #1 (water main)",
         "evidence": {"incident": inc}, "passages": [passage],
         "policy": {"verdict": "unclear", "citations": [{"section_id": "DC Code § 9-431.01"}]}}
    [ranked] = recommender.rank_candidates([c])
    out = await recommender.explain({"ranked": [ranked]},  # type: ignore[arg-type]
                                    Runtime(context=ctx))
    [x] = out["ranked"]
    assert x["body"].startswith("Incident #1 is critical and open.")
    assert "Policy check: unclear (DC Code § 9-431.01)." in x["body"]
    assert LABEL in x["body"] and "[p1]" in x["body"]
    assert x["explained_by"] == {"model": "extractive", "backend": "extractive",
                                 "mode": "extractive", "cited": ["p1"]}
