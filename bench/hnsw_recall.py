"""HNSW recall@10 and latency against exact search, through the product's vector query.

    .venv/bin/python -m bench.hnsw_recall [--chunks 100000] [--other 25000] [--queries 200]

Data (civitas_bench DB): tenant A gets `--chunks` chunks, tenant B `--other`, in the same
`document_chunk` table and HNSW index (m=16, ef_construction=64, cosine), so every query
runs with the tenant filter like in production. The vectors are real-text derived: the
embeddings of short DC Code Title 9 and GTFS spec sentences (our own Embedder, ONNX
backend), each repeated with variation (plus gaussian noise, renormalised, cosine ~0.85 to
its sentence); the chunk text is the sentence. `--random` uses random unit vectors
instead (the hardest case for HNSW). Queries are other noisy copies of random sentences.

Exact top-10 is a brute-force numpy scan of the tenant's vectors; HNSW top-10 is the first
10 of `search._vector_ranking` (the SQL `search()` runs: tenant filter, document join,
`hnsw.ef_search`, iterative scan) with the product's candidate count (50). Latency is
that call's wall time seen from Python (session round trips included).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from bench.common import ensure_database, machine, make_tenant_with_assets
from bench.embeddings import short_sentences

INDEX = "ix_document_chunk_embedding_hnsw"


def gtfs_sentences() -> list[str]:
    import re

    from bench.embeddings import data_dir

    out = []
    for path in sorted((data_dir() / "policy" / "gtfs_spec").glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for s in re.split(r"(?<=[.;])\s+", line.strip("|-#* ")):
                if 8 <= len(s.split()) <= 40:
                    out.append(" ".join(s.split()))
    return list(dict.fromkeys(out))


def base_vectors(n_sentences: int) -> tuple[list[str], np.ndarray]:
    from civitas_ray.ai.embedder import Embedder
    from civitas_ray.config import EmbeddingSettings

    texts = list(dict.fromkeys(short_sentences(n_sentences // 2) + gtfs_sentences()))
    texts = texts[:n_sentences]
    t0 = time.perf_counter()
    vectors = Embedder(EmbeddingSettings(device="cpu", backend="onnx", batch_size=64)).embed(texts)
    print(f"embedded {len(texts)} base sentences in {time.perf_counter() - t0:.0f} s")
    return texts, vectors


def noisy(base: np.ndarray, idx: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    v = base[idx] + rng.normal(0, sigma / np.sqrt(base.shape[1]), (len(idx), base.shape[1]))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


async def load(conn: asyncpg.Connection, tenant: uuid.UUID, texts: list[str],
               vectors: np.ndarray, src: np.ndarray) -> None:
    doc = uuid.uuid4()
    await conn.execute("insert into document (id, tenant_id, title, content_type, size_bytes, "
                       "status, progress) values ($1, $2, 'hnsw bench', 'text/plain', 0, "
                       "'ready', 1)", doc, tenant)
    records = ((uuid.uuid4(), tenant, doc, i, texts[src[i]], 0, len(texts[src[i]]),
                vectors[i])
               for i in range(len(vectors)))
    await conn.copy_records_to_table(
        "document_chunk", records=records,
        columns=["id", "tenant_id", "document_id", "ordinal", "text", "char_start",
                 "char_end", "embedding"])


async def measure(tenant: uuid.UUID, vectors: np.ndarray, queries: np.ndarray,
                  ef: int, iterative: bool, k: int) -> tuple[float, float, float]:
    from civitas_ray.db.session import tenant_session
    from civitas_ray.documents.search import Filters, _vector_ranking

    ids_exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recalls, lat = [], []
    filters = Filters(tenant_id=tenant)
    async with tenant_session(tenant) as s:
        await _vector_ranking(s, filters, queries[0], k, ef, iterative=iterative)  # warm
    for qi, q in enumerate(queries):
        async with tenant_session(tenant) as s:
            t0 = time.perf_counter()
            got = await _vector_ranking(s, filters, q, k, ef, iterative=iterative)
            lat.append((time.perf_counter() - t0) * 1000)
        top = got[:10]
        # compare by similarity value (ids are uuids): a hit is exact when its similarity
        # reaches the 10th exact one (ties counted as hits)
        exact_sims = queries[qi] @ vectors[ids_exact[qi]].T
        recalls.append(sum(1 for _, sim in top if sim >= exact_sims[-1] - 1e-4) / 10)
    return float(np.mean(recalls)), float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


async def run(args: argparse.Namespace) -> None:
    from civitas_ray.config import get_settings
    from civitas_ray.db.session import dispose_engine

    await ensure_database()
    rng = np.random.default_rng(7)
    dim = 384
    if args.random:
        texts = ["random vector"]
        base = None
    else:
        texts, base = base_vectors(args.sentences)
    sets = {}
    for name, n in (("A", args.chunks), ("B", args.other)):
        if base is None:
            v = rng.normal(size=(n, dim))
            sets[name] = ((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32),
                          np.zeros(n, dtype=int))
        else:
            src = rng.integers(0, len(texts), n)
            sets[name] = (noisy(base, src, args.sigma, rng), src)
    if base is None:
        q = rng.normal(size=(args.queries, dim))
        queries = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    else:
        queries = noisy(base, rng.integers(0, len(texts), args.queries), args.sigma, rng)

    tenants = {}
    for name in sets:
        tenants[name], _, _ = await make_tenant_with_assets(0)
    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    await register_vector(conn)
    try:
        t0 = time.perf_counter()
        await conn.execute(f"drop index if exists {INDEX}")
        for name, (vecs, src) in sets.items():
            await load(conn, tenants[name], texts, vecs, src)
        t1 = time.perf_counter()
        await conn.execute("set maintenance_work_mem = '1GB'")
        await conn.execute(f"create index {INDEX} on document_chunk using hnsw "
                           "(embedding vector_cosine_ops) with (m = 16, ef_construction = 64)")
        await conn.execute("analyze document_chunk")
        total = await conn.fetchval("select count(*) from document_chunk")
        print(f"loaded {sum(len(v) for v, _ in sets.values()):,} chunks in {t1 - t0:.0f} s, "
              f"HNSW built in {time.perf_counter() - t1:.0f} s ({total:,} rows in the table)")
        await dispose_engine()
        print(f"\n{'random unit vectors' if args.random else 'real-text derived vectors'}, "
              f"{len(queries)} queries, candidates k={args.k}, recall@10 of the first 10\n")
        print("| tenant (chunks) | ef_search | iterative scan | recall@10 | p50 ms | p99 ms |")
        print("|---|---:|---|---:|---:|---:|")
        for name, (vecs, _) in sets.items():
            for iterative in (False, True):
                for ef in args.ef:
                    r, p50, p99 = await measure(tenants[name], vecs, queries, ef, iterative,
                                                args.k)
                    print(f"| {name} ({len(vecs):,}) | {ef} | "
                          f"{'relaxed_order' if iterative else 'off'} | {r:.3f} | "
                          f"{p50:.1f} | {p99:.1f} |", flush=True)
    finally:
        if not args.keep:
            for t in tenants.values():  # cascades to documents and chunks
                await conn.execute("delete from document_chunk where tenant_id = $1", t)
                await conn.execute("delete from document where tenant_id = $1", t)
        await conn.close()
        await dispose_engine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=100_000, help="chunks of tenant A")
    ap.add_argument("--other", type=int, default=25_000, help="chunks of tenant B")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sentences", type=int, default=2000, help="distinct base sentences")
    ap.add_argument("--sigma", type=float, default=0.6, help="noise norm per repeat")
    ap.add_argument("--k", type=int, default=50, help="candidates (SEARCH_CANDIDATES)")
    ap.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")],
                    default=[50, 100, 200])
    ap.add_argument("--random", action="store_true", help="random unit vectors")
    ap.add_argument("--keep", action="store_true", help="keep the rows afterwards")
    args = ap.parse_args()
    print(f"machine: {machine()}; load {__import__('os').getloadavg()[0]:.2f}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
