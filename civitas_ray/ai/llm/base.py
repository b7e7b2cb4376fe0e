"""The one interface every LLM backend implements, and the errors they raise.

Agents code against `LLM.complete()` only: whether a vLLM deployment, a hosted
OpenAI-compatible API, a local llama.cpp server or the extractive mode answers, the
`Completion` says which (`backend`, `model`, `mode`) and which passages it used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
Mode = Literal["generative", "extractive"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Passage:
    """Retrieved data (a document chunk, a record). Quoted to the model, never obeyed."""

    id: str
    text: str
    title: str | None = None
    citation: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Completion:
    """One answer, labelled with who produced it and how.

    `cited` holds the ids of passages the answer used (extractive: the ones it quoted).
    `audit` is a content-free record of the call (prompt hash, passage ids sent and
    dropped, attempts, usage) fit for the audit log; see `llm.audit.record_completion`.
    """

    text: str
    backend: str
    model: str
    mode: Mode
    usage: dict[str, int]
    cited: list[str]
    finish_reason: str
    latency_s: float
    dropped: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)


class LLMError(Exception):
    """Base of every backend failure; the message says what and where."""


class LLMUnavailable(LLMError):
    """The backend could not be reached, or kept failing (5xx/429) through every retry."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class LLMTimeout(LLMUnavailable):
    """The call's deadline (`timeout_s`) passed before the backend answered."""


class LLMRequestError(LLMError):
    """The backend refused the request (a 4xx other than 429): retrying would not help."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class LLMResponseError(LLMError):
    """The backend answered with something that is not a chat completion."""


class PromptTooLong(ValueError):
    """The instructions, task and facts alone do not fit the context window."""


class LLM(ABC):
    """A chat model, or the extractive stand-in, behind one call."""

    name: str
    mode: Mode

    @abstractmethod
    async def complete(
        self, task: str, *, instructions: str, passages: Sequence[Passage] = (),
        facts: Mapping[str, Any] | None = None, max_tokens: int = 400,
        temperature: float = 0.2, timeout_s: float | None = None,
    ) -> Completion:
        """Answer `task` following `instructions`, using `passages` and `facts` as data."""

    @abstractmethod
    async def health(self) -> dict[str, Any]:
        """{"ok", "backend", "model", "latency_s", "error"?}: reachable or not, never raises."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections; the default holds none."""


def validate_request(
    task: str, *, instructions: str, passages: Sequence[Passage],
    facts: Mapping[str, Any] | None, max_tokens: int, temperature: float,
    timeout_s: float | None,
) -> None:
    """Refuse bad input before anything is sent, so no call is half-made."""
    if not isinstance(task, str) or not task.strip():
        raise ValueError("task must be a non-empty string")
    if not isinstance(instructions, str):
        raise ValueError("instructions must be a string")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not 0.0 <= float(temperature) <= 2.0:
        raise ValueError(f"temperature must be within [0, 2], got {temperature!r}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if facts is not None and not isinstance(facts, Mapping):
        raise ValueError("facts must be a mapping of names to values")
    seen: set[str] = set()
    for p in passages:
        if not isinstance(p, Passage):
            raise ValueError(f"passages must be Passage objects, got {type(p).__name__}")
        if not p.id or not isinstance(p.id, str):
            raise ValueError("every passage needs a non-empty string id")
        if p.id in seen:
            raise ValueError(f"duplicate passage id {p.id!r}")
        seen.add(p.id)
