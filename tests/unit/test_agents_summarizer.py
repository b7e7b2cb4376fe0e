"""IncidentSummarizer: the facts it writes from, the fingerprint that skips repeats, and
the explain node with the product's extractive backend."""

from __future__ import annotations

import uuid

import pytest
from langgraph.graph import END
from langgraph.runtime import Runtime

from civitas_ray.ai.agents import summarizer as sm
from civitas_ray.ai.agents.base import AgentContext
from civitas_ray.ai.llm import ExtractiveLLM
from civitas_ray.audit.service import SYSTEM_ACTOR

pytestmark = pytest.mark.unit

INCIDENT = {"id": str(uuid.uuid4()), "number": 12, "title": "Pressure drop on main 4",
            "description": "", "domain": "utilities", "severity": "major", "status": "open",
            "opened_at": "2026-12-01T10:00:00+00:00", "properties": {}}


def event(kind: str, body: str = "", data: dict[str, object] | None = None) -> dict[str, object]:
    return {"kind": kind, "body": body, "data": data or {},
            "created_at": "2026-12-01T10:05:00+00:00"}


TIMELINE = [event("created", "Pressure drop on main 4"),
            event("alert", "pressure below 2.1 bar", {"alert": {"value": 1.8}})]
ALERTS = [{"message": "pressure threshold", "severity": "major", "status": "firing",
           "metric": "pressure", "value": 1.8, "threshold": 2.1}]


def test_own_summary_updates_do_not_change_the_fingerprint() -> None:
    f1 = sm.build_facts(INCIDENT, TIMELINE, ALERTS, [])
    own = event("update", "", {"changed": {"summary": {"from": None, "to": "x"}}})
    f2 = sm.build_facts(INCIDENT, [*TIMELINE, own], ALERTS, [])
    assert sm.fingerprint(f1) == sm.fingerprint(f2)
    f3 = sm.build_facts(INCIDENT, [*TIMELINE, event("comment", "crew on site")], ALERTS, [])
    assert sm.fingerprint(f3) != sm.fingerprint(f1)
    assert f3["timeline"][-1]["body"] == "crew on site"


async def test_analyse_skips_unchanged_and_explain_quotes_the_facts() -> None:
    state: sm.SummarizerState = {"incident_id": INCIDENT["id"], "incident": INCIDENT,
                                 "timeline": TIMELINE, "alerts": ALERTS, "telemetry": [],
                                 "previous": {}}
    state.update(await sm.analyse(state))  # type: ignore[typeddict-item]
    assert state["changed"] and sm._route(state) == "explain"
    again = {**state, "previous": {"fingerprint": state["fingerprint"]}}
    again.update(await sm.analyse(again))  # type: ignore[arg-type,typeddict-item]
    assert not again["changed"] and sm._route(again) == END  # type: ignore[arg-type]
    ctx = AgentContext(tenant_id=uuid.uuid4(), actor=SYSTEM_ACTOR, llm=ExtractiveLLM(),
                       extras={"search": False})
    out = await sm.explain(state, Runtime(context=ctx))
    assert out["explanation"]["mode"] == "extractive"
    assert "Pressure drop on main 4" in out["summary"]
    assert "pressure threshold" in out["summary"]
