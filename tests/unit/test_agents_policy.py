"""PolicyComplianceAgent nodes on real DC Code sections: parsing, the rules, verdict reading.

No database: passages are built from ../shared/data/policy/dc_code_title9.jsonl the way
retrieval would hand them over, and the judge runs with the real ExtractiveLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langgraph.runtime import Runtime

from civitas_ray.ai.agents import policy
from civitas_ray.ai.agents.base import AgentContext
from civitas_ray.ai.llm.base import Passage
from civitas_ray.ai.llm.extractive import LABEL, ExtractiveLLM
from civitas_ray.audit.service import SYSTEM_ACTOR

pytestmark = pytest.mark.unit

TRENCH = "DC Code § 9-431.01"
PAVING = "DC Code § 9-1201.04"
PARKS = "DC Code § 9-1201.06"
OBSTRUCTIONS = "DC Code § 9-1201.07"
SCOPED = "DC Code § 9-203.06"  # "(d) This section shall not apply to ..."


@pytest.fixture(scope="module")
def code(data_dir: Path) -> dict[str, dict[str, Any]]:
    rows = (json.loads(line) for line in
            (data_dir / "policy" / "dc_code_title9.jsonl").read_text().splitlines() if line)
    return {r["id"]: r for r in rows}


def passages(code: dict[str, dict[str, Any]], *ids: str) -> list[Passage]:
    return [Passage(id=f"p{i}", text=code[s]["text"], title=f"{s} {code[s]['title']}",
                    citation={"section_id": s, "section_title": code[s]["title"],
                              "document_id": "doc", "char_start": 0,
                              "char_end": len(code[s]["text"])})
            for i, s in enumerate(ids, start=1)]


def judge(code: dict[str, dict[str, Any]], action: str, *ids: str) -> policy.Judgement:
    parsed = policy.parse_action(action)
    return policy.judge_by_rules(action_words=parsed["terms"], passages=passages(code, *ids),
                                 has_permit=parsed["has_permit"],
                                 lacks_permit=parsed["lacks_permit"])


def test_parse_derives_queries_and_permit_flags() -> None:
    p = policy.parse_action("  Dig a trench in the   highway, without a permit  ")
    assert p["action"] == "Dig a trench in the highway, without a permit"
    assert p["terms"][:3] == ["dig", "trench", "highway"] and "without" not in p["terms"]
    assert p["queries"][0] == p["action"]
    assert "dig OR trench OR highway" in p["queries"][1]
    assert any(q.endswith("permit required") for q in p["queries"])
    assert any(q.endswith("prohibited unlawful") for q in p["queries"])
    assert len(p["queries"]) == len(set(p["queries"]))
    assert p["lacks_permit"] and not p["has_permit"]
    held = policy.parse_action("Dig a trench in the highway under a valid permit")
    assert held["has_permit"] and not held["lacks_permit"]
    for bad in ("", "   ", "x" * (policy.MAX_ACTION_CHARS + 1)):
        with pytest.raises(policy.PolicyCheckError):
            policy.parse_action(bad)


def test_rules_find_the_prohibition_and_its_permit_gate(code: dict[str, Any]) -> None:
    ids = (PAVING, TRENCH, PARKS, OBSTRUCTIONS)
    j = judge(code, "Dig a trench in the public highway without a permit from the Mayor", *ids)
    assert j.verdict == "non_compliant" and j.relied_on == ["p2"]
    assert "unlawful" in j.quotes["p2"] and j.quotes["p2"] in code[TRENCH]["text"]
    assert TRENCH in j.rationale and "[p2]" in j.rationale
    j = judge(code, "Dig a trench in the public highway with a permit from the Mayor", *ids)
    assert (j.verdict, j.relied_on) == ("compliant", ["p2"])
    j = judge(code, "Dig a trench in the public highway", *ids)
    assert (j.verdict, j.relied_on) == ("unclear", ["p2"])


def test_rules_read_permissions_and_default_to_unclear(code: dict[str, Any]) -> None:
    j = judge(code, "Set apart part of the avenue as a park with shade trees and walks",
              PAVING, TRENCH, PARKS)
    assert (j.verdict, j.relied_on) == ("compliant", ["p3"])
    assert j.quotes["p3"].startswith("The proper authorities of the District are authorized")
    j = judge(code, "Paint the bus shelters blue", PAVING, TRENCH, PARKS)
    assert (j.verdict, j.relied_on, j.quotes) == ("unclear", [], {})
    j = judge(code, "Dig a trench in the highway", )
    assert j.verdict == "unclear" and j.relied_on == []


def test_scoping_wording_is_not_a_prohibition(code: dict[str, Any]) -> None:
    """"This section shall not apply to ... repair ... of a street" forbids nothing."""
    assert "shall not apply" in code[SCOPED]["text"]
    action = "Repair and reconstruct the street that is already open to traffic"
    found = policy.find_cues(policy.parse_action(action)["terms"], passages(code, SCOPED))
    assert not [f for f in found if f.kind == "prohibition"]
    assert judge(code, action, SCOPED).verdict != "non_compliant"


@pytest.mark.parametrize(("text", "verdict", "ids", "how"), [
    ('{"verdict": "non_compliant", "passages": ["p2"], "rationale": "See [p2]."}',
     "non_compliant", ["p2"], "json"),
    ('Sure!\n```json\n{"verdict": "Non-Compliant", "passages": ["p1", "p9"]}\n```',
     "non_compliant", ["p1"], "json"),
    ('{"verdict": "compliant", "passages": [], "rationale": "allowed by [p3]"}',
     "compliant", ["p3"], "json"),
    ('{"verdict": "compliant", "passages": ["p7"]}', "unclear", [], "json"),
    ('{"verdict": "maybe"} The action is not compliant with [p1].', "non_compliant", ["p1"],
     "fallback"),
    ("The action is compliant [p2, p3].", "compliant", ["p2", "p3"], "fallback"),
    ("Compliant per [p1] but non-compliant per [p2].", "unclear", ["p1", "p2"], "fallback"),
    ("It is non_compliant.", "unclear", [], "fallback"),
    ("", "unclear", [], "fallback"),
])
def test_parse_verdict_json_first_then_constrained(text: str, verdict: str, ids: list[str],
                                                   how: str) -> None:
    got = policy.parse_verdict(text, ["p1", "p2", "p3"])
    assert (got[0], got[1], got[3]) == (verdict, ids, how)


def test_parse_verdict_takes_ids_the_backend_reported() -> None:
    verdict, ids, _, _ = policy.parse_verdict("Verdict: compliant.", ["p1", "p2"], ["p2"])
    assert (verdict, ids) == ("compliant", ["p2"])


def _ctx() -> AgentContext:
    import uuid

    return AgentContext(tenant_id=uuid.uuid4(), actor=SYSTEM_ACTOR, llm=ExtractiveLLM())


async def test_judge_and_answer_nodes_in_extractive_mode(code: dict[str, Any]) -> None:
    ps = passages(code, PARKS, TRENCH)
    state: dict[str, Any] = {
        **policy.parse_action("Make a cut in the public highway without a permit"),
        "passages": ps}
    out = await policy.judge(state, Runtime(context=_ctx()))  # type: ignore[arg-type]
    assert out["verdict"] == "non_compliant" and out["relied_on"] == ["p2"]
    assert out["mode"] == "extractive" and out["model"] == policy.RULES_MODEL
    assert out["backend"] == "extractive" and out["rationale"].startswith(LABEL)
    final = (await policy.answer({**state, **out}))["output"]  # type: ignore[arg-type]
    assert final["verdict"] == "non_compliant"
    [cit] = final["citations"]
    assert cit["section_id"] == TRENCH and cit["passage_id"] == "p2"
    assert cit["quote"] in code[TRENCH]["text"]
    assert [c["section_id"] for c in final["considered"]] == [PARKS, TRENCH]


async def test_answer_without_a_relied_passage_is_unclear(code: dict[str, Any]) -> None:
    ps = passages(code, TRENCH)
    final = (await policy.answer({  # type: ignore[arg-type]
        "action": "x", "passages": ps, "verdict": "non_compliant", "relied_on": ["p9"],
        "rationale": "", "mode": "generative", "model": "m"}))["output"]
    assert final["verdict"] == "unclear" and final["citations"] == []


def test_fuse_hits_ranks_chunks_found_by_several_queries_first() -> None:
    class Hit:
        def __init__(self, section: str, start: int) -> None:
            self.text = f"text of {section}"
            self.citation = {"document_id": "d", "section_id": section,
                             "section_title": "t", "char_start": start}

    a, b, c = Hit("A", 0), Hit("B", 10), Hit("C", 20)
    fused = policy.fuse_hits([[a, b], [c, b], [b]], limit=2)
    assert [p.citation["section_id"] for p in fused] == ["B", "A"]
    assert [p.id for p in fused] == ["p1", "p2"] and fused[0].title == "B t"
