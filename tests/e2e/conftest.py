"""A real server for tests that need real sockets (WebSocket clients, slow readers).

`live_server` runs `create_app()` under uvicorn in this process, in the tests' session
event loop, on a free port, and yields its base URL (`http://127.0.0.1:<port>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn


@pytest.fixture(scope="session")
async def live_server(app: Any) -> AsyncIterator[str]:
    from civitas_ray.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A fixed send buffer (accepted sockets inherit it) instead of loopback autotuning up
    # to 4 MiB: a client that stops reading is then felt by the server after ~100 KiB,
    # as over a real network, and slow-consumer tests need no huge volumes.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(), lifespan="on", log_config=None, access_log=False,
                            log_level="warning")
    server = uvicorn.Server(config)
    # The test process keeps its signals: Ctrl-C stops pytest, not just the server.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        pytest.fail("the live server did not start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 15)
    sock.close()
