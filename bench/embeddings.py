"""Embedding throughput: torch vs ONNX vs ONNX int8 on the CPU, and the GPU path.

    .venv/bin/python -m bench.embeddings [--n 2000] [--batch-sizes 16,64,256]

Inputs are short real sentences: the DC Code Title 9 text split at sentence ends (8-40
words each), read from CIVITAS_DATA_DIR (default ../shared/data). Each backend goes
through the product's own `Embedder` (civitas_ray/ai/embedder.py). Quality loss of a
backend is its cosine agreement with the torch embeddings of the same sentences (1.0 is
identical); the retrieval metrics of the backends are in bench/rag_quality.py.

When CUDA is available the GPU path runs too: sentence-transformers on `cuda` in fp16
with large batches (the goal in issue 5 is >= 30,000 short sentences/s on an H100).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("CIVITAS_DATA_DIR", ROOT.parent / "shared" / "data"))


def short_sentences(n: int) -> list[str]:
    """`n` distinct short sentences of DC Code Title 9 (cycled with a suffix if fewer)."""
    out: list[str] = []
    seen: set[str] = set()
    with open(data_dir() / "policy" / "dc_code_title9.jsonl", encoding="utf-8") as f:
        for line in f:
            for s in re.split(r"(?<=[.;:])\s+", json.loads(line)["text"]):
                s = " ".join(s.split())
                if 8 <= len(s.split()) <= 40 and s not in seen:
                    seen.add(s)
                    out.append(s)
    if not out:
        raise SystemExit("no sentences found in dc_code_title9.jsonl")
    base = list(out)
    i = 0
    while len(out) < n:
        out.append(f"{base[i % len(base)]} ({i // len(base) + 1})")
        i += 1
    return out[:n]


def rate(embed: object, texts: list[str], repeats: int = 1) -> tuple[float, np.ndarray]:
    """Best sentences/s of `repeats` timed runs (after one warm-up batch), and the vectors."""
    fn = embed  # a callable texts -> vectors
    fn(texts[:64])  # type: ignore[operator]
    best = 0.0
    vectors = np.zeros(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        vectors = fn(texts)  # type: ignore[operator]
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best, vectors


def cpu_backends(texts: list[str], batch_sizes: list[int], threads: int) -> None:
    import torch

    from civitas_ray.ai.embedder import Embedder
    from civitas_ray.config import EmbeddingSettings

    torch.set_num_threads(threads)
    print(f"\n### CPU ({threads} threads), {len(texts)} sentences, mean "
          f"{np.mean([len(t.split()) for t in texts]):.1f} words\n")
    print("| backend | batch | sentences/s | cosine vs torch: mean | min |")
    print("|---|---:|---:|---:|---:|")
    reference: np.ndarray | None = None
    for backend in ("torch", "onnx", "onnx-int8"):
        for bs in batch_sizes:
            emb = Embedder(EmbeddingSettings(device="cpu", backend=backend, batch_size=bs))
            t0 = time.perf_counter()
            _ = emb.model  # load (and for onnx: export / quantise at first use)
            load_s = time.perf_counter() - t0
            per_s, vectors = rate(emb.embed, texts)
            if backend == "torch" and reference is None:
                reference = vectors
            assert reference is not None
            cos = np.sum(vectors * reference, axis=1)
            print(f"| {backend} | {bs} | {per_s:,.0f} | {cos.mean():.5f} | {cos.min():.5f} |"
                  f"{'' if bs != batch_sizes[0] else f' <!-- load {load_s:.1f} s -->'}",
                  flush=True)


def gpu_path(texts: list[str], batch_sizes: list[int]) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from civitas_ray.ai.embedder import resolve_model

    if not torch.cuda.is_available():
        print("\n### GPU\n\nnot measured: no GPU lent to this task (torch sees no CUDA device)")
        return
    name = torch.cuda.get_device_name(0)
    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cuda")
    model.max_seq_length = 256
    model.half()
    cpu_ref = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    ref = cpu_ref.encode(texts[:512], normalize_embeddings=True, convert_to_numpy=True)
    print(f"\n### GPU: {name}, fp16, {len(texts)} sentences\n")
    print("| batch | sentences/s | cosine vs CPU fp32 (512 sentences): mean | min |")
    print("|---:|---:|---:|---:|")
    for bs in batch_sizes:
        def embed(t: list[str], bs: int = bs) -> np.ndarray:
            v = model.encode(t, batch_size=bs, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
            torch.cuda.synchronize()
            return np.asarray(v, dtype=np.float32)
        per_s, vectors = rate(embed, texts, repeats=2)
        cos = np.sum(vectors[:512] * ref, axis=1)
        print(f"| {bs} | {per_s:,.0f} | {cos.mean():.5f} | {cos.min():.5f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="sentences per CPU run")
    ap.add_argument("--batch-sizes", default="16,64,256")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpu-n", type=int, default=100_000, help="sentences per GPU run")
    ap.add_argument("--gpu-batch-sizes", default="256,1024,4096")
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}")
    if not args.skip_cpu:
        cpu_backends(short_sentences(args.n), [int(b) for b in args.batch_sizes.split(",")],
                     args.threads)
    gpu_path(short_sentences(args.gpu_n), [int(b) for b in args.gpu_batch_sizes.split(",")])


if __name__ == "__main__":
    main()
