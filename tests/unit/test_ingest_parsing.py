"""Payload parsing (JSON batches, SenML) and in-batch de-duplication, without a database."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from civitas_ray.telemetry import copy as pgcopy
from civitas_ray.telemetry.parse import (
    PayloadError,
    parse_json_batch,
    parse_readings,
    parse_senml,
    split_senml_name,
)
from civitas_ray.telemetry.writer import Rows

pytestmark = pytest.mark.unit


def _batch(n: int, *, iso: bool, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    base = datetime(2026, 5, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        ts = base + timedelta(seconds=i, microseconds=rnd.randrange(1_000_000))
        out.append({"asset_id": str(uuid.UUID(int=rnd.getrandbits(128))),
                    "metric": rnd.choice(["flow", "speed", "pm2.5"]),
                    "ts": ts.isoformat().replace("+00:00", "Z") if iso else ts.timestamp(),
                    "value": rnd.choice([rnd.random() * 100, rnd.randrange(-50, 50)]),
                    "quality": rnd.randrange(0, 5)})
    return out


@pytest.mark.parametrize("iso", [True, False])
def test_fast_path_equals_reading_by_reading_path(iso: bool) -> None:
    good = _batch(500, iso=iso)
    fast = parse_readings(good, max_readings=10_000)
    # One bad reading sends the whole batch down the per-reading path.
    slow = parse_readings([*good, {"asset_id": "x", "metric": "m", "ts": None, "value": 1}],
                          max_readings=10_000)
    assert slow.rejected == [(500, "ts is missing")]
    assert fast.rejected == [] and len(fast) == len(slow) == 500
    assert fast.asset_ref == slow.asset_ref and fast.metric == slow.metric
    assert np.array_equal(fast.ts_us, slow.ts_us)
    assert np.array_equal(fast.value, slow.value)
    assert np.array_equal(fast.quality, slow.quality)


@pytest.mark.parametrize("reading,reason", [
    ({"metric": "m", "ts": 1.0, "value": 1}, "asset_id is missing"),
    ({"asset_id": "a", "metric": "m", "ts": 1.0, "value": True}, "value must be a number"),
    ({"asset_id": "a", "metric": "m", "ts": 1.0, "value": "3"}, "value must be a number"),
    ({"asset_id": "a", "metric": "m", "ts": "2026-01-01T00:00:00", "value": 1}, "UTC offset"),
    ({"asset_id": "a", "metric": "m", "ts": "yesterday", "value": 1}, "not ISO 8601"),
    ({"asset_id": "a", "metric": "m" * 65, "ts": 1.0, "value": 1}, "metric must be"),
    ({"asset_id": "a", "metric": "m", "ts": 1.0, "value": 1, "quality": -1}, "quality"),
    ({"asset_id": "a", "metric": "m", "ts": 1.0, "value": 1e400}, "not finite"),
])
def test_each_bad_reading_gets_a_reason_and_the_rest_are_kept(reading: dict,
                                                             reason: str) -> None:
    good = _batch(3, iso=False)
    parsed = parse_readings([good[0], reading, good[1]], max_readings=100)
    assert len(parsed) == 2 and list(parsed.index) == [0, 2]
    [(index, why)] = parsed.rejected
    assert index == 1 and reason in why


def test_offsets_are_converted_to_utc() -> None:
    parsed = parse_readings([{"asset_id": "a", "metric": "m", "value": 1,
                              "ts": "2026-01-01T02:00:00+02:00"}], max_readings=10)
    assert parsed.ts_us[0] == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e6)


def test_payload_shapes() -> None:
    with pytest.raises(PayloadError):
        parse_json_batch(b"[1,", max_readings=10)
    with pytest.raises(PayloadError):
        parse_json_batch(b'{"data": []}', max_readings=10)
    one = parse_json_batch(b'{"metric": "m", "ts": 5, "value": 2}', max_readings=10,
                           default_asset="dev-1")
    assert one.asset_ref == ["dev-1"]


def test_senml_base_fields_and_relative_time() -> None:
    now_us = 1_800_000_000_000_000
    pack = [{"bn": "dev-7/", "bt": 1_700_000_000, "n": "temp", "v": 20.5, "u": "Cel"},
            {"n": "temp", "t": 10, "v": 20.75},
            {"bn": "dev-8:", "bt": 0, "bv": 100, "n": "level", "v": 1.5, "t": -5}]
    p = parse_senml(orjson.dumps(pack), max_readings=10, now_us=now_us)
    assert p.asset_ref == ["dev-7", "dev-7", "dev-8"] and p.metric == ["temp", "temp", "level"]
    assert list(p.ts_us) == [1_700_000_000_000_000, 1_700_000_010_000_000,
                             now_us - 5_000_000]
    assert list(p.value) == [20.5, 20.75, 101.5]
    assert split_senml_name("urn:dev:6f1c/flow") == ("6f1c", "flow")
    with pytest.raises(ValueError):
        split_senml_name("nometric")


def _rows(assets: list[bytes], metrics: list[int], ts: list[int], values: list[float]) -> Rows:
    n = len(ts)
    return Rows(tenant=np.frombuffer(b"t" * 16 * n, dtype="V16"),
                asset=np.frombuffer(b"".join(assets), dtype="V16"),
                metric_codes=np.array(metrics, np.int32), metric_names=["a", "b"],
                ts_us=np.array(ts, np.int64), value=np.array(values, np.float64),
                quality=np.zeros(n, np.int16))


def test_dedupe_keeps_the_last_of_each_key_in_order() -> None:
    x, y = b"x" * 16, b"y" * 16
    rows = _rows([x, y, x, x, y, x], [0, 0, 0, 1, 0, 0], [1, 1, 1, 1, 2, 1],
                 [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    d = rows.dedupe()
    assert list(d.value) == [2.0, 4.0, 5.0, 6.0]
    unique = _rows([x, y], [0, 0], [1, 1], [1.0, 2.0])
    assert unique.dedupe() is unique


def test_binary_copy_layout() -> None:
    rows = _rows([b"a" * 16, b"b" * 16], [0, 1], [946_684_800_000_000, 0], [1.5, -2.0])
    data = pgcopy.encode(tenant=rows.tenant, asset=rows.asset, metric_codes=rows.metric_codes,
                         metric_names=["a", "bb"], ts_us=rows.ts_us, value=rows.value,
                         quality=rows.quality)
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00") and data.endswith(b"\xff\xff")
    # 2000-01-01 is PostgreSQL's epoch: its timestamp is zero.
    assert b"\x00\x00\x00\x08" + b"\x00" * 8 in data
    assert len(data) == 19 + 2 + 2 * (2 + 6 * 4 + 16 + 16 + 8 + 8 + 2) + 1 + 2
