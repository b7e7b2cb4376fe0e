"""Consumption from cumulative registers: real DAIAD smart water meters and the edge cases."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from civitas_ray.feeds.meters import REL_TOLERANCE, RegisterState, derive_consumption

pytestmark = pytest.mark.unit

DATA = Path(os.environ.get("CIVITAS_DATA_DIR", Path(__file__).parents[2] / ".." / "shared" /
                           "data"))
DAIAD = DATA / "timeseries" / "daiad_smart_water_meter_trialA_hourly_2016-2017.zip"


@pytest.fixture(scope="module")
def daiad() -> dict[str, np.ndarray]:
    if not DAIAD.exists():
        pytest.skip(f"no DAIAD data at {DAIAD}")
    with zipfile.ZipFile(DAIAD) as zf, zf.open("swm_trialA.csv") as fh:
        df = pd.read_csv(fh, sep=";")
    df["ts"] = pd.to_datetime(df["datetime"], format="%d/%m/%Y %H:%M:%S")
    df = df.sort_values(["user key", "ts"], kind="stable")
    return {k: g["meter reading"].to_numpy(float) for k, g in df.groupby("user key")}


def _reference(v: np.ndarray) -> tuple[float, int]:
    """Independent count: the increments between consecutive readings away from any drop
    beyond the jitter tolerance (the steps before, at and after a drop are left out:
    they are what the reset/glitch rules decide), and the number of such drops."""
    d = np.diff(v)
    big_drop = d < -REL_TOLERANCE * np.abs(v[:-1])
    excluded = (big_drop | np.concatenate([[False], big_drop[:-1]])
                | np.concatenate([big_drop[1:], [False]]))
    return float(d[~excluded & (d > 0)].sum()), int(big_drop.sum())


def test_daiad_consumption_never_negative_and_matches_increments(daiad: dict) -> None:
    with_drops = 0
    for key, v in daiad.items():
        out = derive_consumption(v)
        assert out.consumption.shape == v.shape
        assert np.all(out.consumption >= 0), key
        expected, drops = _reference(v)
        with_drops += drops > 0
        if drops == 0:
            # a register that only grew: consumption is exactly its increments
            assert out.consumption.sum() == pytest.approx(v[-1] - v[0]), key
            assert out.resets == out.glitches == 0
        else:
            # around a drop the answer differs only by what the drop's neighbours decide
            # (a glitch is measured across, a reset counts 0): never more than the gross
            assert out.consumption.sum() <= float(np.diff(v)[np.diff(v) > 0].sum()) + 1e-6
            assert out.consumption.sum() >= expected - 1e-6 - _jitter_slack(v)
    assert with_drops >= 3  # the data has real resets and glitches to exercise


def _jitter_slack(v: np.ndarray) -> float:
    d = np.diff(v)
    small = (d < 0) & (d >= -REL_TOLERANCE * np.abs(v[:-1]))
    return float(-d[small].sum())


def test_daiad_in_batches_equals_one_pass(daiad: dict) -> None:
    for key in list(daiad)[:30]:
        v = daiad[key]
        whole = derive_consumption(v).consumption
        parts, state = [], None
        for chunk in np.array_split(v, 17):
            r = derive_consumption(chunk, state=state)
            parts.append(r.consumption)
            state = r.state
        np.testing.assert_allclose(np.concatenate(parts), whole, err_msg=key)


def test_reset_counts_zero_then_measures_from_new_register() -> None:
    r = derive_consumption([100.0, 105, 110, 0.5, 2.5, 7.5])
    np.testing.assert_allclose(r.consumption, [0, 5, 5, 0, 2, 5])
    assert r.resets == 1


def test_meter_replacement_starts_a_new_segment() -> None:
    r = derive_consumption([5000.0, 5010, 12.0, 20, 31])
    np.testing.assert_allclose(r.consumption, [0, 10, 0, 8, 11])


def test_rollover_wraps_at_the_modulus() -> None:
    r = derive_consumption([99990.0, 99999.9, 4.1, 10.1], rollover=100000)
    np.testing.assert_allclose(r.consumption, [0, 9.9, 4.2, 6.0], atol=1e-9)
    assert r.rollovers == 1 and r.resets == 0
    # without the modulus the same drop is a reset: no negative, no invented volume
    np.testing.assert_allclose(derive_consumption([99990.0, 99999.9, 4.1, 10.1]).consumption,
                               [0, 9.9, 0, 6.0], atol=1e-9)


def test_glitches_drop_or_spike_are_measured_across() -> None:
    down = derive_consumption([10.0, 11, 12, 0, 13, 14])
    np.testing.assert_allclose(down.consumption, [0, 1, 1, 0, 1, 1])
    up = derive_consumption([10.0, 11, 900, 12, 13])
    np.testing.assert_allclose(up.consumption, [0, 1, 0, 1, 1])
    assert down.glitches == up.glitches == 1


def test_jitter_is_not_counted_twice() -> None:
    r = derive_consumption([1000.0, 1001, 1000.9, 1001.0, 1002])
    np.testing.assert_allclose(r.consumption, [0, 1, 0, 0, 1])


def test_trailing_drop_is_judged_by_the_next_batch() -> None:
    first = derive_consumption([10.0, 11, 12, 0])
    assert first.state == RegisterState(12.0, 0, pending=0.0)
    came_back = derive_consumption([13.0, 14], state=first.state)
    np.testing.assert_allclose(came_back.consumption, [1, 1])
    stayed = derive_consumption([1.0, 2], state=first.state)
    np.testing.assert_allclose(stayed.consumption, [1, 1])
    assert stayed.resets == 1


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        derive_consumption([1.0, float("nan")])
    with pytest.raises(ValueError, match="rollover"):
        derive_consumption([1.0, 2.0], rollover=0)
