"""PolicyComplianceAgent: is a proposed action compliant with the tenant's policy documents?

The graph is parse -> retrieve -> judge -> answer. Retrieval runs several hybrid searches
derived from the action and fuses them; the judge is the language model when one is
configured (passages go in as quoted data, the verdict comes back as JSON, read robustly)
or, in extractive mode, rules over the retrieved sentences (prohibition, permit and
permission cues). Either way the answer cites only passages it relied on, and an answer
that relies on none is "unclear": a verdict nobody can check is not a verdict.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from civitas_ray.ai.agents.base import AgentContext, RunResult, run_agent
from civitas_ray.ai.llm.base import Passage
from civitas_ray.ai.llm.extractive import STOPWORDS, split_sentences, terms
from civitas_ray.ai.llm.prompt import cited_ids
from civitas_ray.db.session import tenant_session

log = logging.getLogger(__name__)

AGENT = "policy_compliance"
Verdict = Literal["compliant", "non_compliant", "unclear"]
VERDICTS: tuple[Verdict, ...] = ("compliant", "non_compliant", "unclear")

MAX_ACTION_CHARS = 2000
SEARCH_LIMIT = 8  # hits per query
MAX_PASSAGES = 6  # passages handed to the judge after fusion
RRF_K = 60
MIN_OVERLAP = 2  # shared content terms for a sentence to bear on the action
MIN_COVERAGE = 0.3  # ... and the share of the action's (first six) terms it covers
RULES_MODEL = "policy-rules"

# Cue phrases of the extractive judge. Prohibitions win over permissions; a permit
# requirement turns on whether the action says it holds the permit.
_PROHIBIT = re.compile(
    r"\b(shall not|may not|must not|prohibited|unlawful|forbidden|no person shall|"
    r"not be permitted|not permitted|is an offense)\b", re.I)
# Negative wording that scopes a rule rather than forbids anything ("shall not apply to").
_NOT_A_PROHIBITION = re.compile(
    r"\b(shall|does|do|will) not (apply|be construed|be deemed|be interpreted|affect|limit|"
    r"diminish|prevent|impair|require)\b", re.I)
_PERMIT_WORD = r"(permit|license|licence|authori[sz]ation|approval|consent)"
_PERMIT_REQ = re.compile(
    rf"\bwithout\s+(a|an|the|any)?\s*(written\s+)?{_PERMIT_WORD}|"
    rf"\b{_PERMIT_WORD}s?\s+(is\s+|are\s+|shall\s+be\s+)?required\b|"
    rf"\bobtain(ing)?\s+(a|an|the)?\s*(written\s+)?{_PERMIT_WORD}", re.I)
_ALLOW = re.compile(
    r"\b(may|is authorized|are authorized|authorized to|is permitted|are permitted|"
    r"shall have power|is empowered|are empowered)\b", re.I)
_HAS_PERMIT = re.compile(
    rf"\b(with|holding|holds|under|after obtaining|having obtained|obtained|granted)\s+"
    rf"(a|an|the|its|our|their|valid)?\s*(written\s+|valid\s+)?{_PERMIT_WORD}|"
    r"\b(permitted|authori[sz]ed|approved|licensed)\s+by\b", re.I)
_LACKS_PERMIT = re.compile(
    rf"\b(without|no|lacking|before obtaining|before any)\s+(a|an|the|any)?\s*"
    rf"(written\s+|valid\s+)?{_PERMIT_WORD}", re.I)

# Words of the request itself rather than of its subject: kept out of queries and overlap.
_GENERIC = frozenset({
    "action", "actions", "proposed", "propose", "proposal", "allowed", "allow", "compliant",
    "compliance", "policy", "rule", "rules", "without", "with", "city", "crew", "crews", "team",
    "operator", "operators", "plan", "planned", "want", "need", "needs", "would", "like",
    "please", "incident", "incidents", "dispatch", "send", "make", "take", "until"})


class PolicyCheckError(ValueError):
    """The request cannot be judged as given (empty or oversized action)."""


class PolicyState(TypedDict, total=False):
    action: str
    incident: dict[str, Any] | None
    terms: list[str]
    queries: list[str]
    has_permit: bool
    lacks_permit: bool
    passages: list[Passage]
    verdict: Verdict
    relied_on: list[str]
    quotes: dict[str, str]
    rationale: str
    judged_by: str
    model: str
    backend: str
    mode: str
    usage: dict[str, int]
    output: dict[str, Any]


# --- parse -----------------------------------------------------------------------------

def _stem(word: str) -> str:
    """A light suffix strip, so "trenches" meets "trench" and "closing" meets "close"."""
    for suffix in ("ings", "ing", "ies", "es", "ed", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def action_terms(text: str) -> list[str]:
    """The action's content words, in order of appearance, without request boilerplate."""
    seen: dict[str, None] = {}
    for w in re.findall(r"\w+", text.lower()):
        if len(w) > 1 and w not in STOPWORDS and w not in _GENERIC and not w.isdigit():
            seen.setdefault(w, None)
    return list(seen)


def derive_queries(action: str, words: list[str]) -> list[str]:
    """Several searches for one action: as written, any of its key terms, and its key
    terms next to the cue words that policy text uses for permits and prohibitions."""
    key = words[:6]
    queries = [action[:300]]
    if key:
        queries.append(" OR ".join(key))
        queries.append(" ".join(key[:4]) + " permit required")
        queries.append(" ".join(key[:4]) + " prohibited unlawful")
    return list(dict.fromkeys(q for q in queries if q.strip()))


def parse_action(action: str) -> dict[str, Any]:
    text = " ".join(str(action or "").split())
    if not text:
        raise PolicyCheckError("action must be a non-empty description of what is proposed")
    if len(text) > MAX_ACTION_CHARS:
        raise PolicyCheckError(f"action is longer than {MAX_ACTION_CHARS} characters")
    words = action_terms(text)
    return {"action": text, "terms": words, "queries": derive_queries(text, words),
            "has_permit": bool(_HAS_PERMIT.search(text)),
            "lacks_permit": bool(_LACKS_PERMIT.search(text))}


async def parse(state: PolicyState) -> dict[str, Any]:
    return parse_action(state["action"])


# --- retrieve --------------------------------------------------------------------------

def citation_dict(hit: Any) -> dict[str, Any]:
    """A hit's citation as plain JSON values (search gives a dataclass or a mapping)."""
    c = hit.citation
    raw = c.as_dict() if hasattr(c, "as_dict") else dict(c or {})
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in raw.items()}


def _hit_key(c: dict[str, Any]) -> tuple[str, ...]:
    return (str(c.get("document_id")), str(c.get("section_id")), str(c.get("char_start")))


def fuse_hits(result_lists: list[list[Any]], *, limit: int = MAX_PASSAGES) -> list[Passage]:
    """Reciprocal rank fusion over the queries' hit lists, as passages p1..pN."""
    scores: dict[tuple[str, ...], float] = {}
    first: dict[tuple[str, ...], Any] = {}
    for hits in result_lists:
        for rank, hit in enumerate(hits):
            c = citation_dict(hit)
            key = _hit_key(c)
            scores[key] = scores.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
            first.setdefault(key, (hit, c))
    ordered = sorted(scores, key=lambda k: -scores[k])[:limit]
    out: list[Passage] = []
    for i, key in enumerate(ordered, start=1):
        hit, c = first[key]
        title = " ".join(str(x) for x in (c.get("section_id"), c.get("section_title")) if x)
        out.append(Passage(id=f"p{i}", text=hit.text, title=title or c.get("title"),
                           citation=c))
    return out


async def retrieve(state: PolicyState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    from civitas_ray.documents import search as documents_search

    ctx = runtime.context
    lists: list[list[Any]] = []
    async with tenant_session(ctx.tenant_id) as session:
        for q in state["queries"]:
            lists.append(list(await documents_search.search(
                session, ctx.tenant_id, q, limit=SEARCH_LIMIT, mode="hybrid")))
    passages = fuse_hits(lists)
    log.info("policy passages retrieved", extra={
        "tenant_id": str(ctx.tenant_id), "queries": len(lists),
        "passages": [p.citation.get("section_id") for p in passages]})
    return {"passages": passages}


# --- judge -----------------------------------------------------------------------------

@dataclass(slots=True)
class Finding:
    """One sentence of one passage that bears on the action, and what it says."""

    passage_id: str
    sentence: str
    kind: Literal["prohibition", "requirement", "permission"]
    overlap: int
    needs_permit: bool = False


@dataclass(slots=True)
class Judgement:
    verdict: Verdict
    relied_on: list[str]
    rationale: str
    quotes: dict[str, str] = field(default_factory=dict)


def _overlap(action_stems: set[str], sentence: str) -> int:
    return len(action_stems & {_stem(w) for w in terms(sentence) if w not in _GENERIC})


def find_cues(action_words: list[str], passages: list[Passage]) -> list[Finding]:
    """Sentences sharing enough of the action's terms that carry a cue phrase, best first."""
    stems = {_stem(w) for w in action_words}
    need = max(MIN_OVERLAP, round(MIN_COVERAGE * min(len(stems), 6)))
    found: list[Finding] = []
    for p in passages:
        for sentence in split_sentences(p.text):
            overlap = _overlap(stems, sentence)
            if overlap < need:
                continue
            needs_permit = bool(_PERMIT_REQ.search(sentence))
            if _PROHIBIT.search(_NOT_A_PROHIBITION.sub(" ", sentence)):
                kind: Literal["prohibition", "requirement", "permission"] = "prohibition"
            elif needs_permit:
                kind = "requirement"
            elif _ALLOW.search(sentence):
                kind = "permission"
            else:
                continue
            found.append(Finding(p.id, sentence, kind, overlap, needs_permit))
    found.sort(key=lambda f: -f.overlap)
    return found


def judge_by_rules(*, action_words: list[str], passages: list[Passage], has_permit: bool,
                   lacks_permit: bool) -> Judgement:
    """The extractive verdict: clear cue sentences decide; anything else is unclear."""
    findings = find_cues(action_words, passages)
    titles = {p.id: p.title or p.id for p in passages}
    restrictive = [f for f in findings if f.kind in ("prohibition", "requirement")]
    if restrictive:
        top = restrictive[0]
        gated = top.needs_permit
        if gated and has_permit and not lacks_permit:
            verdict: Verdict = "compliant"
            why = "it is allowed with a permit, and the action says one is held"
        elif gated and not lacks_permit:
            verdict = "unclear"
            why = "it needs a permit or authorization, and the action does not say one is held"
        else:
            verdict = "non_compliant"
            why = ("it is not allowed without a permit, and the action has none" if gated
                   else "it prohibits what the action proposes")
        chosen = [top]
    else:
        allowed = [f for f in findings if f.kind == "permission"]
        if not allowed:
            return Judgement("unclear", [], "No retrieved passage clearly permits or "
                             "prohibits this action; a person should check the policy.")
        top = allowed[0]
        verdict, why, chosen = "compliant", "it permits what the action proposes", [top]
    quotes = {f.passage_id: f.sentence for f in chosen}
    rationale = (f"{titles[top.passage_id]} [{top.passage_id}] applies: {why}. "
                 f'It reads: "{top.sentence}"')
    return Judgement(verdict, list(quotes), rationale, quotes)


_JUDGE_INSTRUCTIONS = (
    "Decide whether the proposed action complies with the policy passages. Reply with one "
    'JSON object and nothing else: {"verdict": "compliant" | "non_compliant" | "unclear", '
    '"passages": ["<id of each passage you relied on>"], "rationale": "<one or two '
    'sentences citing passages as [id]>"}. Answer "unclear" when the passages do not settle '
    "the question.")

_VERDICT_WORD = re.compile(
    r"\b(non[\s_-]?compliant|not[\s_-]compliant|compliant|unclear)\b", re.I)


def normalise_verdict(word: Any) -> Verdict | None:
    if not isinstance(word, str):
        return None
    w = re.sub(r"[\s-]+", "_", word.strip().lower())
    if w in ("non_compliant", "noncompliant", "not_compliant"):
        return "non_compliant"
    if w in ("compliant", "unclear"):
        return cast(Verdict, w)
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def parse_verdict(text: str, allowed_ids: list[str],
                  cited: list[str] | None = None) -> tuple[Verdict, list[str], str, str]:
    """(verdict, relied-on ids, rationale, how it was read) from a model's answer.

    JSON first (the first object with a verdict); else a constrained reading: exactly one
    verdict word in the text, ids cited as [id]. Ids outside `allowed_ids` are dropped, and
    an answer relying on no passage is "unclear".
    """
    verdict: Verdict | None = None
    ids: list[str] = []
    rationale = ""
    how = "fallback"
    for obj in _json_objects(text):
        v = normalise_verdict(obj.get("verdict"))
        if v is None:
            continue
        verdict, how = v, "json"
        raw = obj.get("passages") or obj.get("citations") or []
        if isinstance(raw, str):
            raw = [raw]
        ids = [str(i).strip().strip("[]") for i in raw if isinstance(i, str | int)]
        rationale = str(obj.get("rationale") or "")
        ids += cited_ids(rationale, allowed_ids)
        break
    if verdict is None:
        words = {normalise_verdict(m.group(1)) for m in _VERDICT_WORD.finditer(text)}
        words.discard(None)
        verdict = cast(Verdict, words.pop()) if len(words) == 1 else "unclear"
        ids = cited_ids(text, allowed_ids) + list(cited or [])
        rationale = text
    known = set(allowed_ids)
    relied = list(dict.fromkeys(i for i in ids if i in known))
    if not relied:
        verdict = "unclear"
    return verdict, relied, " ".join(rationale.split())[:2000], how


async def judge(state: PolicyState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    llm = runtime.context.get_llm()
    passages = state.get("passages") or []
    if llm.mode == "extractive" or not passages:
        j = judge_by_rules(action_words=state.get("terms") or [], passages=passages,
                           has_permit=bool(state.get("has_permit")),
                           lacks_permit=bool(state.get("lacks_permit")))
        label = getattr(llm, "label", "[extractive]")
        return {"verdict": j.verdict, "relied_on": j.relied_on, "quotes": j.quotes,
                "rationale": f"{label} {j.rationale}" if llm.mode == "extractive"
                else j.rationale,
                "judged_by": "rules", "model": RULES_MODEL, "backend": llm.name,
                "mode": "extractive", "usage": {}}
    facts: dict[str, Any] = {"proposed_action": state["action"]}
    if state.get("incident"):
        facts["incident"] = state["incident"]
    completion = await llm.complete(
        f"Is this proposed action compliant with the passages? Action: {state['action']}",
        instructions=_JUDGE_INSTRUCTIONS, passages=passages, facts=facts, max_tokens=300,
        temperature=0.0)
    verdict, relied, rationale, how = parse_verdict(
        completion.text, [p.id for p in passages], completion.cited)
    return {"verdict": verdict, "relied_on": relied, "quotes": {}, "rationale": rationale,
            "judged_by": f"llm-{how}", "model": completion.model, "backend": completion.backend,
            "mode": completion.mode, "usage": dict(completion.usage)}


# --- answer ----------------------------------------------------------------------------

def citation_of(p: Passage, quote: str | None = None) -> dict[str, Any]:
    out = {**p.citation, "passage_id": p.id}
    if quote:
        out["quote"] = quote
    return out


async def answer(state: PolicyState) -> dict[str, Any]:
    passages = {p.id: p for p in state.get("passages") or []}
    quotes = state.get("quotes") or {}
    citations = [citation_of(passages[i], quotes.get(i)) for i in state.get("relied_on") or []
                 if i in passages]
    verdict = state["verdict"] if citations else "unclear"
    output = {
        "action": state["action"], "verdict": verdict, "rationale": state.get("rationale", ""),
        "citations": citations, "mode": state.get("mode"), "model": state.get("model"),
        "backend": state.get("backend"), "judged_by": state.get("judged_by"),
        "queries": state.get("queries", []),
        "considered": [{"passage_id": p.id, "section_id": p.citation.get("section_id"),
                        "title": p.title} for p in passages.values()],
    }
    return {"output": output}


def build_graph() -> Any:
    g: StateGraph[PolicyState, AgentContext, PolicyState, PolicyState] = StateGraph(
        PolicyState, context_schema=AgentContext)
    g.add_node("parse", parse)
    g.add_node("retrieve", retrieve)
    g.add_node("judge", judge)
    g.add_node("answer", answer)
    g.add_edge(START, "parse")
    g.add_edge("parse", "retrieve")
    g.add_edge("retrieve", "judge")
    g.add_edge("judge", "answer")
    g.add_edge("answer", END)
    return g.compile()


GRAPH = build_graph()


async def check(ctx: AgentContext, *, action: str,
                incident: dict[str, Any] | None = None) -> dict[str, Any]:
    """One compliance check, not recorded on its own (the recommender reuses it per
    candidate and records its own run); returns the answer document."""
    state = await GRAPH.ainvoke({"action": action, "incident": incident}, context=ctx)
    return cast(dict[str, Any], state["output"])


async def run(ctx: AgentContext, *, action: str, incident: dict[str, Any] | None = None,
              idempotency_key: str | None = None) -> RunResult:
    """A recorded, audited compliance check (agent_run row + audit entry with citations)."""
    parse_action(action)  # refuse bad input before a run is recorded

    async def invoke(c: AgentContext) -> dict[str, Any]:
        out = await check(c, action=action, incident=incident)
        return {"output": out, "cited": out["citations"], "model": out["model"],
                "backend": out["backend"], "mode": out["mode"]}

    subject_id = str(incident["id"]) if incident and incident.get("id") else None
    inputs = {"action": action,
              "incident_id": subject_id if isinstance(subject_id, str) else None}
    return await run_agent(AGENT, ctx, invoke, inputs=inputs,
                           subject_type="incident" if subject_id else None,
                           subject_id=subject_id, idempotency_key=idempotency_key)


def incident_facts(incident: Any) -> dict[str, Any]:
    """The incident fields a judge may see, as data."""
    return {"id": str(incident.id), "number": incident.number, "title": incident.title,
            "description": incident.description, "domain": incident.domain,
            "severity": incident.severity, "status": incident.status,
            "zone_id": str(incident.zone_id) if incident.zone_id else None}


__all__ = ["AGENT", "GRAPH", "VERDICTS", "PolicyCheckError", "Verdict", "check",
           "incident_facts", "judge_by_rules", "parse_action", "parse_verdict", "run"]
