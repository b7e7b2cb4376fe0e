"""The Forecaster through its Serve deployment: bulk scoring rows/s, `forecast` latency
under concurrency, and a redeploy that pins another version under continuous load.

Setup: database civitas_bench (migrated), a fresh tenant, two versions of a traffic model
trained on I-94 volume (2016-07 .. 2018-06) with the 30-feature spec of `bench.ml_training`
(v1: default parameters, v2: 15 leaves), v1 promoted. A local Ray of its own
(`address="local"`, namespace of its own, no HTTP proxy); the forecaster application of
serve_config.yaml deployed the way `civitas up` does (`runtime.serving.deploy`), one
replica unless --replicas.

1. Scoring: one-step feature rows of I-94 (built by `features.build_features`) sent as
   numpy arrays to `Forecaster.score` through a DeploymentHandle, for each (callers,
   rows per request); rows/s = rows answered / wall time over `--seconds`.
2. Forecast latency: recursive 24-step `forecast` requests (400 hours of history each)
   from N concurrent callers for `--seconds`; p50/p99 per request and requests/s.
3. Redeploy under load: `--callers` clients forecast continuously (horizon 6); after a
   third of `--requests` the config is applied again with generation 2 and a pin to v2;
   the clients keep going until `--requests` requests are answered. Failures, requests/s
   before / during (deploy call until the replica answers with generation 2) / after,
   and per client: never version 1 after version 2.

Run: .venv/bin/python -m bench.ml_serving                       (~3 min on 2 cores)
     .venv/bin/python -m bench.ml_serving --skip-score --skip-latency --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import ROOT, ensure_database, machine, run_on_local_ray
from bench.ml_training import SPEC
from civitas_ray.ml import datasets
from civitas_ray.ml.features import build_features
from civitas_ray.ml.models import MODELS, ForecastModel

NAME = "traffic"
HISTORY = 400
CONFIG = ROOT / "serve_config.yaml"


@dataclass
class Setup:
    y: pd.Series
    tenant_id: uuid.UUID
    key: str
    v1: uuid.UUID
    v2: uuid.UUID
    model: ForecastModel

    @property
    def pin(self) -> str:
        return f"{self.tenant_id}/{NAME}/{self.key}"

    def base(self) -> dict[str, Any]:
        return {"tenant_id": str(self.tenant_id), "name": NAME, "subject_key": self.key}

    def forecast_request(self, end: int, horizon: int) -> dict[str, Any]:
        h = self.y.iloc[end - HISTORY:end]
        return {**self.base(), "horizon": horizon,
                "history": {"ts": [t.isoformat() for t in h.index],
                            "value": [None if np.isnan(v) else float(v) for v in h.to_numpy()]}}


async def prepare(data_dir: Path) -> Setup:
    """Two trained versions in the registry of a fresh tenant, v1 in production."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import dispose_engine, tenant_session
    from civitas_ray.ml import registry
    from civitas_ray.tenants import service as tenants
    from civitas_ray.tenants.schemas import TenantCreate

    await ensure_database()
    y = datasets.i94_traffic(data_dir)["traffic_volume"].loc["2016-07-01":]
    train = y.loc[:"2018-06-30"]
    started = time.perf_counter()
    # One after the other: two LightGBM trainings in two threads of one process have
    # crashed it (SIGSEGV) once here.
    v1 = await asyncio.to_thread(MODELS[NAME](spec=SPEC).fit, train)
    v2 = await asyncio.to_thread(MODELS[NAME](spec=SPEC, params={"num_leaves": 15}).fit, train)
    print(f"trained v1 (best rounds {v1.info['best_iterations']}) and v2 "
          f"({v2.info['best_iterations']}) on {len(train):,} hours in "
          f"{time.perf_counter() - started:.1f} s; {len(v1.feature_names)} features")
    slug = "bench-ml-" + uuid.uuid4().hex[:8]
    asset_id = uuid.uuid4()
    key = registry.subject_key(asset_id=asset_id, zone_id=None, metric="volume")
    ids = []
    async with tenant_session(None, system=True) as s:
        t = await tenants.create(session=s, data=TenantCreate(slug=slug, name=slug),
                                 actor=SYSTEM_ACTOR)
        for model in (v1, v2):
            row = await registry.create_version(
                s, tenant_id=t.id, name=NAME, kind=NAME, key=key, model=model,
                subject={"asset_id": str(asset_id), "metric": "volume"},
                metrics={"beats_seasonal_naive": True}, training_start=None,
                training_end=None, created_by=None, actor=SYSTEM_ACTOR)
            ids.append(row.id)
    async with tenant_session(t.id) as s:
        await registry.promote(s, tenant_id=t.id, version_id=ids[0], actor=SYSTEM_ACTOR)
    await dispose_engine()
    return Setup(y=y, tenant_id=t.id, key=key, v1=ids[0], v2=ids[1], model=v1)


def deploy(user_config: dict[str, Any], replicas: int) -> None:
    """serve_config.yaml's forecaster application, as `civitas up` applies it, with this
    user_config, a fixed replica count and no HTTP proxy."""
    from ray.serve.schema import ServeDeploySchema

    from civitas_ray.ml.serving import APP_NAME
    from civitas_ray.runtime import serving

    raw = serving.load_config(CONFIG, env_vars=serving.settings_env()).model_dump(
        exclude_unset=True)
    [app] = [a for a in raw["applications"] if a["name"] == APP_NAME]
    [dep] = app["deployments"]
    dep.pop("autoscaling_config", None)
    dep.update(num_replicas=replicas, user_config=user_config)
    serving.deploy(ServeDeploySchema.model_validate(
        {**raw, "proxy_location": "Disabled", "applications": [app]}))


async def wait_generation(handle: Any, generation: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if (await handle.info.remote())["generation"] == generation:
                return
        except Exception as exc:  # not deployed yet: keep the reason for the timeout
            last = exc
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the forecaster did not reach generation {generation}") from last


async def wait_running(timeout_s: float = 120) -> None:
    from civitas_ray.ml.serving import APP_NAME
    from civitas_ray.runtime import serving

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = (await asyncio.to_thread(serving.app_states)).get(APP_NAME)
        if state is not None and state.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"the forecaster application is {state.status}: {state.reason}")
        if state is not None and state.status == "RUNNING":
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the forecaster application did not start")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def score_caller(handle: Any, base: dict[str, Any], pool: np.ndarray, size: int,
                       first: int, stride: int, stop: float, latencies: list[float]) -> int:
    """One client scoring `size`-row slices of `pool` until `stop`; returns rows answered."""
    rows = 0
    k = first
    while time.monotonic() < stop:
        start = (k * 7919) % (pool.shape[0] - size)
        k += stride
        t0 = time.perf_counter()
        r = await handle.score.remote({**base, "features": pool[start:start + size]})
        latencies.append(time.perf_counter() - t0)
        rows += int(r["rows"])
    return rows


async def forecast_caller(handle: Any, requests: list[dict[str, Any]], first: int,
                          stride: int, stop: float, latencies: list[float]) -> None:
    k = first
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        await handle.forecast.remote(requests[k % len(requests)])
        latencies.append(time.perf_counter() - t0)
        k += stride


async def bench_score(handle: Any, setup: Setup, seconds: float,
                      callers: list[int], sizes: list[int]) -> None:
    X = build_features(setup.y, setup.model.spec).to_numpy(dtype="float64")
    X = X[np.isfinite(X[:, 0])]
    reps = -(-max(sizes) // X.shape[0]) + 1
    pool = np.tile(X, (reps, 1))
    print(f"\n1. Forecaster.score: numpy feature rows ({X.shape[1]} features) through a "
          f"DeploymentHandle, {seconds:.0f} s each\n"
          f"{'callers':>7} {'rows/request':>12} {'requests':>8} {'rows/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'load':>5}")
    from civitas_ray.ml.serving import score_rows

    for size in sizes:
        t0 = time.perf_counter()
        done = 0
        while time.perf_counter() - t0 < min(seconds, 2.0):
            score_rows(setup.model, pool[done % (pool.shape[0] - size):][:size])
            done += size
        print(f"{'in-process score_rows (reference, this process, no Serve)':>39} "
              f"{done / (time.perf_counter() - t0):10,.0f}")
        for n in callers:
            await handle.score.remote({**setup.base(), "features": pool[:size]})  # warm-up
            latencies: list[float] = []
            t0 = time.perf_counter()
            stop = time.monotonic() + seconds
            rows = sum(await asyncio.gather(*(
                score_caller(handle, setup.base(), pool, size, i, n, stop, latencies)
                for i in range(n))))
            wall = time.perf_counter() - t0
            print(f"{n:7d} {size:12,d} {len(latencies):8d} {rows / wall:10,.0f} "
                  f"{pct(latencies, 50):8.1f} {pct(latencies, 99):8.1f} "
                  f"{os.getloadavg()[0]:5.2f}", flush=True)


async def bench_latency(handle: Any, setup: Setup, seconds: float, callers: list[int],
                        horizon: int) -> None:
    n = len(setup.y)
    requests = [setup.forecast_request(n - 24 * 14 + i * 5, horizon) for i in range(48)]
    print(f"\n2. Forecaster.forecast: {horizon}-step recursive forecasts, {HISTORY} h of "
          f"history per request, {seconds:.0f} s each\n"
          f"{'callers':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'load':>5}")
    for c in callers:
        latencies: list[float] = []
        t0 = time.perf_counter()
        stop = time.monotonic() + seconds
        await asyncio.gather(*(forecast_caller(handle, requests, i, c, stop, latencies)
                               for i in range(c)))
        wall = time.perf_counter() - t0
        print(f"{c:7d} {len(latencies):8d} {len(latencies) / wall:8.1f} "
              f"{pct(latencies, 50):8.1f} {pct(latencies, 99):8.1f} "
              f"{max(latencies) * 1000:8.1f} {os.getloadavg()[0]:5.2f}", flush=True)


@dataclass
class Tally:
    ok: list[float] = field(default_factory=list)      # completion instants
    failed: list[tuple[float, str]] = field(default_factory=list)


async def bench_redeploy(handle: Any, setup: Setup, callers: int, total: int,
                         replicas: int) -> bool:
    n = len(setup.y)
    requests = [setup.forecast_request(n - 24 * 14 + i * 7, 6) for i in range(48)]
    tally = Tally()
    seen: list[list[int]] = [[] for _ in range(callers)]
    stop = asyncio.Event()
    third, done = asyncio.Event(), asyncio.Event()

    def count() -> None:
        answered = len(tally.ok) + len(tally.failed)
        if answered >= total // 3:
            third.set()
        if answered >= total:
            done.set()

    async def caller(i: int) -> None:
        k = i
        while not stop.is_set():
            try:
                r = await handle.forecast.remote(requests[k % len(requests)])
                seen[i].append(int(r["version"]))
                tally.ok.append(time.perf_counter())
            except Exception as exc:  # every failure is counted
                tally.failed.append((time.perf_counter(), f"{type(exc).__name__}: {exc}"))
            k += callers
            count()

    info_before = await handle.info.remote()
    t_start = time.perf_counter()
    tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
    await third.wait()
    t_deploy = time.perf_counter()
    await asyncio.to_thread(deploy, {"generation": 2, "pins": {setup.pin: str(setup.v2)},
                                     "refresh_s": 30}, replicas)
    await wait_generation(handle, 2)
    t_switched = time.perf_counter()
    await done.wait()
    stop.set()
    await asyncio.gather(*tasks)
    t_end = time.perf_counter()
    info_after = await handle.info.remote()

    def rate(a: float, b: float) -> tuple[int, int, float]:
        ok = sum(1 for t in tally.ok if a <= t < b)
        bad = sum(1 for t, _ in tally.failed if a <= t < b)
        return ok, bad, ok / (b - a) if b > a else float("nan")

    print(f"\n3. Redeploy under load: {callers} callers, 6-step forecasts; at request "
          f"{total // 3:,} the config is applied again with generation 2 and a pin to v2\n"
          f"{'phase':8} {'seconds':>7} {'answered':>8} {'failed':>6} {'req/s':>8}")
    for phase, a, b in (("before", t_start, t_deploy), ("during", t_deploy, t_switched),
                        ("after", t_switched, t_end + 1e-9)):
        ok, bad, r = rate(a, b)
        print(f"{phase:8} {b - a:7.1f} {ok:8,d} {bad:6d} {r:8.1f}")
    answered = len(tally.ok)
    monotonic = all(v == sorted(v) and v and v[-1] == 2 for v in seen)
    same = (info_before["pid"], info_before["replica"]) == (info_after["pid"],
                                                             info_after["replica"])
    print(f"total: {answered:,} answered, {len(tally.failed)} failed, "
          f"{answered / (t_end - t_start):.1f} req/s over {t_end - t_start:.1f} s; every "
          f"client saw v1 then v2 and never v1 again: {monotonic}; same replica pid "
          f"before and after: {same}")
    for _, reason in tally.failed[:5]:
        print(f"  failure: {reason}")
    ok = not tally.failed and answered >= total and monotonic
    print(f"{'PASS' if ok else 'FAIL'}: {len(tally.failed)} failures of {answered:,} "
          f"requests (goal: 0 of >= 10,000)")
    return ok


async def run(args: argparse.Namespace) -> None:
    from ray import serve

    from civitas_ray.ml.serving import APP_NAME, get_forecaster_handle

    setup = await prepare(args.data_dir)
    await asyncio.to_thread(deploy, {"generation": 1, "pins": {}, "refresh_s": 30},
                            args.replicas)
    await wait_running()
    handle = get_forecaster_handle()
    await wait_generation(handle, 1)
    print(f"machine: {machine()}; forecaster replicas: {args.replicas}; load average "
          f"{os.getloadavg()[0]:.2f}")
    try:
        if not args.skip_score:
            await bench_score(handle, setup, args.seconds,
                              [int(x) for x in args.score_callers.split(",")],
                              [int(x) for x in args.sizes.split(",")])
        if not args.skip_latency:
            await bench_latency(handle, setup, args.seconds,
                                [int(x) for x in args.latency_callers.split(",")], 24)
        if not args.skip_redeploy:
            await bench_redeploy(handle, setup, args.callers, args.requests, args.replicas)
    finally:
        serve.delete(APP_NAME)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("CIVITAS_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sizes", default="1000,10000,50000", help="rows per score request")
    parser.add_argument("--score-callers", default="1,4,16")
    parser.add_argument("--latency-callers", default="1,8,32")
    parser.add_argument("--callers", type=int, default=16, help="redeploy: concurrent clients")
    parser.add_argument("--requests", type=int, default=12_000, help="redeploy: total")
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-redeploy", action="store_true")
    args = parser.parse_args()
    namespace = "civitas-bench-ml-" + uuid.uuid4().hex[:6]
    os.environ["CIVITAS_RAY__NAMESPACE"] = namespace
    run_on_local_ray(namespace, run(args))


if __name__ == "__main__":
    main()
