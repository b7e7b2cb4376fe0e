"""Any OpenAI-compatible chat endpoint: a hosted API, vLLM on Ray Serve, llama.cpp's server.

One deadline per call (`timeout_s`) bounds every attempt together; 429, 5xx and
connection failures are retried with exponential backoff and jitter (honouring a short
Retry-After), other 4xx are not. The prompt is budgeted to `context_tokens` first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from civitas_ray.ai.llm.base import (
    LLM,
    Completion,
    LLMRequestError,
    LLMResponseError,
    LLMTimeout,
    LLMUnavailable,
    Passage,
    validate_request,
)
from civitas_ray.ai.llm.prompt import build_prompt, cited_ids

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0


def normalise_base_url(url: str) -> str:
    """Accept `http://host:port`, `.../` or `.../v1`; return the root without `/v1`."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"LLM base_url must start with http:// or https://, got {url!r}")
    return url[:-3] if url.endswith("/v1") else url


class OpenAICompatLLM(LLM):
    """A chat model behind `{base_url}/v1/chat/completions`."""

    mode = "generative"

    def __init__(
        self, *, name: str, base_url: str, model: str | None = None,
        api_key: str | None = None, timeout_s: float = 60.0, max_retries: int = 2,
        context_tokens: int = 8192, backoff_s: float = 0.5, backoff_max_s: float = 8.0,
        health_timeout_s: float = 5.0,
    ) -> None:
        if timeout_s <= 0 or max_retries < 0 or context_tokens < 256:
            raise ValueError("timeout_s must be > 0, max_retries >= 0, context_tokens >= 256")
        self.name = name
        self.base_url = normalise_base_url(base_url)
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.context_tokens = context_tokens
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.health_timeout_s = health_timeout_s
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the key
        return (f"OpenAICompatLLM(name={self.name!r}, base_url={self.base_url!r}, "
                f"model={self.model!r})")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                             trust_env=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _model_id(self, deadline: float) -> str:
        """The configured model, else the first one the server lists (llama.cpp, vLLM)."""
        if self.model:
            return self.model
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LLMTimeout(f"{self.name}: deadline passed before the model was known")
        models = await self._list_models(timeout_s=min(remaining, self.health_timeout_s))
        if not models:
            raise LLMResponseError(f"{self.name}: {self.base_url}/v1/models lists no model")
        self.model = models[0]
        return self.model

    async def _list_models(self, *, timeout_s: float) -> list[str]:
        try:
            r = await self._http().get("/v1/models", timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise LLMTimeout(f"{self.name}: {self.base_url}/v1/models did not answer within "
                             f"{timeout_s:.1f}s") from exc
        except httpx.TransportError as exc:
            raise LLMUnavailable(f"{self.name}: cannot reach {self.base_url}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if r.status_code >= 400:
            raise LLMUnavailable(f"{self.name}: {self.base_url}/v1/models answered "
                                 f"HTTP {r.status_code}: {r.text[:200]}")
        try:
            return [str(m["id"]) for m in r.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LLMResponseError(f"{self.name}: /v1/models is not an OpenAI model list") from exc

    async def health(self) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {"backend": self.name, "mode": self.mode, "url": self.base_url,
                               "model": self.model}
        try:
            models = await self._list_models(timeout_s=self.health_timeout_s)
        except Exception as exc:  # health reports, it never raises
            out.update(ok=False, error=str(exc), latency_s=round(time.monotonic() - started, 4))
            log.warning("llm backend unreachable",
                        extra={"backend": self.name, "url": self.base_url, "error": str(exc)})
            return out
        ok = bool(models) if self.model is None else self.model in models
        out.update(ok=ok, models=models, latency_s=round(time.monotonic() - started, 4))
        if not ok:
            out["error"] = (f"model {self.model!r} is not served at {self.base_url} "
                            f"(it serves {models})" if models else "the server lists no model")
            log.warning("llm backend lacks its model",
                        extra={"backend": self.name, "url": self.base_url, "models": models})
        return out

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
            except ValueError:
                pass
        base = min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security

    async def complete(
        self, task: str, *, instructions: str, passages: Sequence[Passage] = (),
        facts: Mapping[str, Any] | None = None, max_tokens: int = 400,
        temperature: float = 0.2, timeout_s: float | None = None,
    ) -> Completion:
        validate_request(task, instructions=instructions, passages=passages, facts=facts,
                         max_tokens=max_tokens, temperature=temperature, timeout_s=timeout_s)
        started = time.monotonic()
        deadline = started + (timeout_s or self.timeout_s)
        plan = build_prompt(task, instructions, passages, facts,
                            context_tokens=self.context_tokens, max_tokens=max_tokens)
        model = await self._model_id(deadline)
        body = {"model": model, "messages": [{"role": m.role, "content": m.content}
                                             for m in plan.messages],
                "max_tokens": max_tokens, "temperature": temperature, "stream": False}
        payload = json.dumps(body, ensure_ascii=False).encode()
        audit: dict[str, Any] = {
            "backend": self.name, "model": model, "mode": self.mode, "url": self.base_url,
            "prompt_sha256": hashlib.sha256(payload).hexdigest(),
            "passages_sent": plan.included, "passages_dropped": plan.dropped,
            "prompt_tokens_estimate": plan.prompt_tokens, "max_tokens": max_tokens,
            "errors": [],
        }
        if plan.dropped:
            log.info("llm prompt over budget: passages dropped",
                     extra={"backend": self.name, "dropped": plan.dropped,
                            "budget_tokens": plan.budget_tokens})
        data, attempts = await self._post(payload, deadline, audit)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            finish = str(choice.get("finish_reason") or "unknown")
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMResponseError(f"{self.name}: the answer has no choices[0].message.content: "
                                   f"{json.dumps(data)[:300]}") from exc
        raw_usage = data.get("usage") or {}
        usage = {k: int(raw_usage[k]) for k in ("prompt_tokens", "completion_tokens",
                                                "total_tokens")
                 if isinstance(raw_usage.get(k), int | float)}
        latency = time.monotonic() - started
        cited = cited_ids(text, plan.included)
        audit.update(attempts=attempts, usage=usage, finish_reason=finish, cited=cited,
                     latency_s=round(latency, 4), served_model=data.get("model"),
                     answer_sha256=hashlib.sha256(text.encode()).hexdigest())
        log.info("llm completion", extra={"backend": self.name, "model": model,
                                          "attempts": attempts, "usage": usage,
                                          "latency_s": round(latency, 3)})
        return Completion(text=text.strip(), backend=self.name, model=model,
                          mode="generative", usage=usage, cited=cited, finish_reason=finish,
                          latency_s=latency, dropped=plan.dropped, audit=audit)

    async def _post(self, payload: bytes, deadline: float,
                    audit: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST with retries inside the deadline; the parsed body and the attempts made."""
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LLMTimeout(f"{self.name}: no answer from {self.base_url} within the deadline "
                                 f"({attempts - 1} attempts: {audit['errors']})",
                                 attempts=attempts - 1)
            retry_after: str | None = None
            try:
                r = await self._http().post(
                    "/v1/chat/completions", content=payload, timeout=remaining,
                    headers={"Content-Type": "application/json"})
            except httpx.TimeoutException as exc:
                audit["errors"].append(f"timeout: {type(exc).__name__}")
                raise LLMTimeout(f"{self.name}: {self.base_url} did not answer within the "
                                 f"deadline (attempt {attempts})", attempts=attempts) from exc
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    try:
                        data = r.json()
                    except ValueError as exc:
                        raise LLMResponseError(f"{self.name}: the answer is not JSON: "
                                               f"{r.text[:200]}") from exc
                    if not isinstance(data, dict):
                        raise LLMResponseError(f"{self.name}: the answer is not a JSON object")
                    return data, attempts
                error = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in RETRY_STATUS:
                    audit["errors"].append(error)
                    raise LLMRequestError(f"{self.name}: {self.base_url} refused the request: "
                                          f"{error}", status=r.status_code)
                retry_after = r.headers.get("Retry-After")
            audit["errors"].append(error)
            if attempts > self.max_retries:
                log.warning("llm backend failed", extra={"backend": self.name, "url": self.base_url,
                                                         "attempts": attempts, "error": error})
                raise LLMUnavailable(f"{self.name}: {self.base_url} failed after {attempts} "
                                     f"attempts: {error}", attempts=attempts)
            delay = self._backoff(attempts, retry_after)
            if time.monotonic() + delay >= deadline:
                raise LLMTimeout(f"{self.name}: {self.base_url} failed ({error}) and the deadline "
                                 f"leaves no time to retry", attempts=attempts)
            log.info("llm retry", extra={"backend": self.name, "attempt": attempts,
                                         "error": error, "delay_s": round(delay, 3)})
            await asyncio.sleep(delay)
