"""`civitas ai serve-local | health | ask`: run the local model and check the LLM backend."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Annotated, Any

import typer

ai_app = typer.Typer(help="LLM backends: serve the local model, check and try the configured one.",
                     no_args_is_help=True)


@ai_app.command("serve-local")
def serve_local(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one)")] = 8091,
    ctx: Annotated[int, typer.Option(help="Context window in tokens")] = 2048,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: up to 4)")] = None,
) -> None:
    """Serve SmolLM2-135M-Instruct (CPU, llama.cpp) as an OpenAI-compatible API until Ctrl-C.

    Point the platform at it with CIVITAS_LLM__BACKEND=local (and CIVITAS_LLM__BASE_URL
    when the port is not 8091).
    """
    from civitas_ray.ai.llm.local import LocalModelError, LocalServer

    async def run() -> int:
        server = LocalServer(host=host, port=port or None, n_ctx=ctx, n_threads=threads,
                             startup_timeout_s=180)
        try:
            await server.start()
        except LocalModelError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            return 1
        typer.echo(f"local model {server.alias} at {server.url}/v1 (Ctrl-C stops)")
        # SIGTERM (systemd, `timeout`, docker stop) stops the server as Ctrl-C does.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        exited = asyncio.ensure_future(server.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            return exited.result() if exited.done() else 0
        finally:
            stopping.cancel()
            await server.stop()

    raise typer.Exit(asyncio.run(run()))


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=2))


@ai_app.command("health")
def health() -> None:
    """Whether the configured backend answers (exit 1 if not)."""
    from civitas_ray.ai.llm import get_llm

    async def run() -> dict[str, Any]:
        llm = get_llm()
        try:
            return await llm.health()
        finally:
            await llm.aclose()

    out = asyncio.run(run())
    _print(out)
    raise typer.Exit(0 if out.get("ok") else 1)


@ai_app.command("ask")
def ask(
    task: str,
    passage: Annotated[list[str] | None, typer.Option(help="A passage text (repeatable)")] = None,
    max_tokens: Annotated[int, typer.Option(help="Answer budget")] = 200,
) -> None:
    """Ask the configured backend TASK over the given passages; print the Completion."""
    from dataclasses import asdict

    from civitas_ray.ai.llm import LLMError, Passage, get_llm

    async def run() -> dict[str, Any]:
        llm = get_llm()
        try:
            passages = [Passage(id=f"p{i + 1}", text=t) for i, t in enumerate(passage or [])]
            out = await llm.complete(task, instructions="Answer briefly.", passages=passages,
                                     max_tokens=max_tokens)
            return asdict(out)
        finally:
            await llm.aclose()

    try:
        _print(asyncio.run(run()))
    except (LLMError, ValueError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


def register(app: typer.Typer) -> None:
    app.add_typer(ai_app, name="ai")
