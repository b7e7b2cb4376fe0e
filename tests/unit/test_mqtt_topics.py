"""The MQTT topic contract and the bridge's pure state: no broker, no database."""

from __future__ import annotations

import random

import numpy as np
import pytest

from civitas_ray.mqtt.bridge import merge
from civitas_ray.mqtt.state import AckWindow, RateLimit, backoff_delay
from civitas_ray.mqtt.topics import Route, TopicError, parse_topic, subscriptions
from civitas_ray.simulate import ReadingSource, SimAsset, _position, synthetic_series
from civitas_ray.telemetry.parse import parse_json_batch, parse_senml

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("topic", "expected"), [
    ("civitas/springfield/telemetry/dev-1", ("springfield", "telemetry", "dev-1")),
    ("civitas/springfield/telemetry/6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a",
     ("springfield", "telemetry", "6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a")),
    ("civitas/a/senml", ("a", "senml", None)),
    ("civitas/city-2/senml/meter:7", ("city-2", "senml", "meter:7")),
])
def test_ingest_topics(topic: str, expected: tuple[str, str, str | None]) -> None:
    route = parse_topic(topic)
    assert (route.tenant_slug, route.kind, route.asset) == expected
    assert route.topic == topic


@pytest.mark.parametrize("topic", [
    "civitas/springfield/telemetry",  # no asset
    "civitas/springfield/telemetry/",  # empty asset
    "civitas/springfield/telemetry/dev-1/extra",
    "civitas/springfield/senml/dev-1/rejected",
    "civitas/springfield/rejected/telemetry/dev-1",  # our own reports
    "civitas/Spring_Field/telemetry/dev-1",  # not a slug
    "civitas/-x/telemetry/dev-1",
    "other/springfield/telemetry/dev-1",
    "civitas/springfield/events",
    "civitas",
    "civitas/springfield/telemetry/" + "x" * 129,
])
def test_other_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_prefix_is_configurable() -> None:
    assert parse_topic("city/x/senml", prefix="city").kind == "senml"
    with pytest.raises(TopicError):
        parse_topic("civitas/x/senml", prefix="city")


def test_rejections_go_where_no_ingest_subscription_matches() -> None:
    assert parse_topic("civitas/t1/telemetry/dev-1").rejected_topic == \
        "civitas/t1/rejected/telemetry/dev-1"
    assert parse_topic("civitas/t1/senml").rejected_topic == "civitas/t1/rejected/senml"
    assert parse_topic("civitas/t1/senml/m-3").rejected_topic == "civitas/t1/rejected/senml/m-3"
    for route in (Route("t1", "telemetry", "d", "civitas/t1/telemetry/d"),
                  Route("t1", "senml", None, "civitas/t1/senml")):
        with pytest.raises(TopicError):
            parse_topic(route.rejected_topic)


def test_subscriptions_shared_or_plain() -> None:
    assert subscriptions(prefix="civitas", share_group="g") == [
        "$share/g/civitas/+/telemetry/+", "$share/g/civitas/+/senml",
        "$share/g/civitas/+/senml/+", "$share/g/civitas/+/signals/+"]
    assert subscriptions(prefix="c", share_group=None) == ["c/+/telemetry/+", "c/+/senml",
                                                           "c/+/senml/+", "c/+/signals/+"]


def test_acks_are_released_in_arrival_order() -> None:
    w = AckWindow()
    a, b, c = w.received(1, 1), w.received(2, 1), w.received(3, 1)
    assert w.complete(b) == [] and len(w) == 3  # b waits behind a
    assert [d.mid for d in w.complete(a)] == [1, 2]
    assert [d.mid for d in w.complete(c)] == [3]
    assert len(w) == 0


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, base_s=0.5, cap_s=30, rng=rng) for n in range(12)]
    for n, d in enumerate(delays):
        ceiling = min(30, 0.5 * 2 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 30 and delays[0] < 1
    assert len({round(backoff_delay(5, base_s=0.5, cap_s=30), 6) for _ in range(20)}) > 1


def test_rate_limit_counts_what_it_suppressed() -> None:
    now = [100.0]
    rl = RateLimit(2, clock=lambda: now[0])
    assert [rl.allow() for _ in range(4)] == [True, True, False, False]
    assert rl.take_suppressed() == 2 and rl.take_suppressed() == 0
    now[0] = 101.2
    assert rl.allow()


def test_merge_maps_batch_indexes_back_to_messages() -> None:
    one = parse_json_batch(b'{"metric": "m", "ts": 1.7e9, "value": 1}', max_readings=10,
                           default_asset="a")
    two = parse_json_batch(b'[{"metric": "m", "ts": 1.7e9, "value": "x"},'
                           b' {"metric": "m", "ts": 1.7e9, "value": 2}]', max_readings=10,
                           default_asset="b")
    merged, starts = merge([one, two])
    assert starts.tolist() == [0, 1] and merged.total == 3
    assert merged.index.tolist() == [0, 2] and merged.asset_ref == ["a", "b"]
    assert merged.value.tolist() == [1.0, 2.0]
    assert [i for i, _ in merged.rejected] == [1]  # message 2, reading 0


def test_simulated_readings_are_spread_and_timestamped_now() -> None:
    series = synthetic_series(seed=1)
    assert len(series["traffic"][0]) == 28 * 24 and len(series["power"]) == 3
    fleet = [SimAsset(id=None, external_id=f"sim-{i:05d}",  # type: ignore[arg-type]
                      kind="traffic" if i % 2 == 0 else "power") for i in range(4)]
    src = ReadingSource(fleet, series, rate=1000, t0_us=1_800_000_000_000_000)
    a1, ts1, v1 = src.take(6)
    a2, ts2, _ = src.take(6)
    assert a1.tolist() == [0, 1, 2, 3, 0, 1] and a2.tolist() == [2, 3, 0, 1, 2, 3]
    assert ts1.tolist() == [1_800_000_000_000_000 + 1000 * g for g in range(6)]
    assert np.all(np.diff(np.concatenate([ts1, ts2])) > 0)
    assert v1[0] in series["traffic"][0] and v1[1] in series["power"][0]
    assert v1[3] in series["power"][1]  # the second power asset replays zone 2


def test_simulated_senml_line_parses_exactly() -> None:
    from civitas_ray.simulate import _ts_text

    us = 1_795_777_658_123_457
    line = f'[{{"n":"sim-00001/power_kw","t":{_ts_text(us)},"v":31234.5}}]'
    parsed = parse_senml(line, max_readings=10)
    assert parsed.asset_ref == ["sim-00001"] and parsed.metric == ["power_kw"]
    assert parsed.ts_us.tolist() == [us] and parsed.value.tolist() == [31234.5]


def test_simulated_assets_stay_near_the_centre() -> None:
    for i in range(50):
        lon, lat = _position(i, (-73.98, 40.75), 8.0)
        assert abs(lat - 40.75) < 8.0 / 111 and abs(lon + 73.98) < 8.0 / 84
    assert _position(3, (-73.98, 40.75), 8.0) == _position(3, (-73.98, 40.75), 8.0)
