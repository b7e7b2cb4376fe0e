"""LLM backends behind one interface, chosen by `settings.llm` (docs/llm.md).

`get_llm()` gives a vLLM deployment on Ray Serve, any OpenAI-compatible endpoint, the
local llama.cpp server, or, when nothing is configured, the labelled extractive mode.
A configured backend that cannot be reached fails loudly (health() and the logs say
why); it falls back to extractive answers only under `fallback: extractive`, and those
answers say `mode="extractive"`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from civitas_ray.ai.llm.base import (
    LLM,
    Completion,
    LLMError,
    LLMRequestError,
    LLMResponseError,
    LLMTimeout,
    LLMUnavailable,
    Message,
    Passage,
    PromptTooLong,
)
from civitas_ray.ai.llm.extractive import FALLBACK_LABEL, ExtractiveLLM
from civitas_ray.ai.llm.openai_compat import OpenAICompatLLM
from civitas_ray.ai.llm.prompt import build_messages, build_prompt

if TYPE_CHECKING:
    from civitas_ray.config import Settings

__all__ = [
    "LLM", "Completion", "ExtractiveLLM", "FallbackLLM", "LLMError", "LLMRequestError",
    "LLMResponseError", "LLMTimeout", "LLMUnavailable", "Message", "OpenAICompatLLM",
    "Passage", "PromptTooLong", "build_messages", "build_prompt", "get_llm",
]

log = logging.getLogger(__name__)


class FallbackLLM(LLM):
    """The configured model, and extractive answers when it is unreachable (opt-in only)."""

    def __init__(self, primary: LLM, fallback: ExtractiveLLM) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.mode = primary.mode

    async def complete(
        self, task: str, *, instructions: str, passages: Sequence[Passage] = (),
        facts: Mapping[str, Any] | None = None, max_tokens: int = 400,
        temperature: float = 0.2, timeout_s: float | None = None,
    ) -> Completion:
        try:
            return await self.primary.complete(
                task, instructions=instructions, passages=passages, facts=facts,
                max_tokens=max_tokens, temperature=temperature, timeout_s=timeout_s)
        except (LLMUnavailable, LLMResponseError) as exc:
            log.warning("llm backend failed, answering extractively",
                        extra={"backend": self.primary.name, "error": str(exc)})
            out = await self.fallback.complete(
                task, instructions=instructions, passages=passages, facts=facts,
                max_tokens=max_tokens, temperature=temperature)
            out.audit["fallback_from"] = self.primary.name
            out.audit["fallback_reason"] = str(exc)
            return out

    async def health(self) -> dict[str, Any]:
        out = await self.primary.health()
        out["fallback"] = self.fallback.name
        return out

    async def aclose(self) -> None:
        await self.primary.aclose()


def get_llm(settings: Settings | None = None) -> LLM:
    """The backend `settings.llm` names (read from CIVITAS_LLM__* when not given)."""
    from civitas_ray.ai.llm.local import DEFAULT_PORT
    from civitas_ray.config import get_settings

    settings = settings or get_settings()
    cfg = settings.llm
    if cfg.backend in ("none", "extractive"):
        return ExtractiveLLM()
    if cfg.base_url:
        base_url = cfg.base_url
    elif cfg.backend == "vllm":
        # The Ray Serve LLM application of serve_config.yaml, under its route prefix.
        base_url = f"http://{settings.serve.host}:{settings.serve.port}/llm"
    elif cfg.backend == "local":
        base_url = f"http://127.0.0.1:{DEFAULT_PORT}"
    else:
        raise ValueError("CIVITAS_LLM__BASE_URL is required for the 'openai' backend")
    llm: LLM = OpenAICompatLLM(
        name=cfg.backend, base_url=base_url, model=cfg.model,
        api_key=cfg.api_key.get_secret_value() if cfg.api_key else None,
        timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, context_tokens=cfg.context_tokens)
    if cfg.fallback == "extractive":
        llm = FallbackLLM(llm, ExtractiveLLM(label=FALLBACK_LABEL))
    return llm
