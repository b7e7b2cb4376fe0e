"""Retrieval quality on the real DC Code Title 9: recall@5 and MRR for vector, text, hybrid.

    .venv/bin/python -m bench.rag_quality [--backend torch|onnx|onnx-int8] [--tenant UUID]

The whole title (CIVITAS_DATA_DIR/policy/dc_code_title9.jsonl, default ../shared/data) is
ingested through the product's own path (`service.prepare` + `service.create` +
`indexing.index_document`: parsing, chunking, embedding with the chosen backend) into a
fresh tenant of the civitas_bench DB; `--tenant` reuses one from an earlier run (its
chunks stay; printed at the end) to compare search changes without re-embedding.

Questions: bench/data/dc_title9_questions.jsonl, written for this bench (paraphrased, not
the section titles' words) with the section id(s) that answer them. A question is found
at rank r when the r-th hit of `search.search(...)` cites an expected section;
recall@5 = share found in the top 5, MRR = mean of 1/r over the top 10 (0 if not found).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

from bench.common import ensure_database, machine, make_tenant_with_assets
from bench.embeddings import data_dir

QUESTIONS = Path(__file__).resolve().parent / "data" / "dc_title9_questions.jsonl"
MODES = ("vector", "text", "hybrid")


def load_questions() -> list[dict[str, object]]:
    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    for r in rows:
        if not r.get("q") or not r.get("expected"):
            raise SystemExit(f"bad question line: {r}")
    return rows


async def ingest(tenant_id: uuid.UUID) -> None:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import tenant_session
    from civitas_ray.documents import indexing, service

    path = data_dir() / "policy" / "dc_code_title9.jsonl"
    prepared = await service.prepare(service.Upload(
        data=path.read_bytes(), content_type="application/jsonl", filename=path.name,
        title="DC Code Title 9"))
    async with tenant_session(tenant_id) as s:
        doc = await service.create(session=s, tenant_id=tenant_id, prepared=prepared,
                                   actor=SYSTEM_ACTOR, created_by=None)
    t0 = time.perf_counter()
    outcome = await indexing.index_document(doc.id, tenant_id, 1)
    if outcome != "ready":
        raise SystemExit(f"indexing ended {outcome}")
    print(f"indexed the title in {time.perf_counter() - t0:.0f} s")


async def evaluate(tenant_id: uuid.UUID, show_misses: bool) -> dict[str, tuple[float, float]]:
    from civitas_ray.ai.embedder import embed_texts
    from civitas_ray.db.session import tenant_session
    from civitas_ray.documents.search import search

    questions = load_questions()
    vectors = await embed_texts([str(q["q"]) for q in questions])
    found: dict[str, list[int | None]] = {m: [] for m in MODES}
    for q, v in zip(questions, vectors, strict=True):
        expected = set(q["expected"])  # type: ignore[arg-type]
        for mode in MODES:
            async with tenant_session(tenant_id) as s:
                hits = await search(s, tenant_id, str(q["q"]), limit=10, mode=mode,
                                    query_vector=v)
            rank = next((i for i, h in enumerate(hits, 1)
                         if h.citation.section_id in expected), None)
            found[mode].append(rank)
            if show_misses and (rank is None or rank > 5):
                top = [h.citation.section_id for h in hits[:3]]
                print(f"  {mode:6} rank {rank}: {q['q']} -> {top}")
    out = {}
    for mode, ranks in found.items():
        recall5 = sum(1 for r in ranks if r is not None and r <= 5) / len(ranks)
        mrr = sum(1.0 / r for r in ranks if r is not None) / len(ranks)
        out[mode] = (recall5, mrr)
    return out


async def run(args: argparse.Namespace) -> None:
    from civitas_ray.config import get_settings
    from civitas_ray.db.session import dispose_engine

    get_settings().embedding.backend = args.backend
    get_settings().embedding.device = "cpu"
    if args.tenant:
        tenant_id = uuid.UUID(args.tenant)
    else:
        await ensure_database()
        tenant_id, _, _ = await make_tenant_with_assets(0)
        await ingest(tenant_id)
    results = await evaluate(tenant_id, args.show_misses)
    s = get_settings().documents
    print(f"\n{len(load_questions())} questions, backend {args.backend}, candidates "
          f"{s.search_candidates}, rrf_k {s.rrf_k}\n")
    print("| mode | recall@5 | MRR@10 |")
    print("|---|---:|---:|")
    for mode, (r5, mrr) in results.items():
        print(f"| {mode} | {r5:.3f} | {mrr:.3f} |")
    print(f"\ntenant {tenant_id} (reuse with --tenant)")
    await dispose_engine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch")
    ap.add_argument("--tenant", help="reuse this tenant's indexed title")
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}; load {__import__('os').getloadavg()[0]:.2f}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
