"""Anomaly scores of one stream: robust z-score of its one-step forecast residual.

The residual (reading minus the forecast made before it arrived) is centred by a
running median and scaled by a running MAD, both tracked online by stochastic
quantile updates: the median moves a small step toward each residual, the MAD grows
or shrinks by a constant factor. Each update is bounded, so one wild reading moves
neither much; a mean and standard deviation would be dragged by the outliers they are
meant to find. The first `warmup` residuals are kept and their exact median/MAD seed
the trackers; no alarm is raised before then.

Real city series are heavy-tailed (on the I-94, Tetouan and DAIAD series about 1 %
of readings sit beyond 6 robust sigmas: holidays, storms, outages), hence the
default alarm threshold of 6; rules choose their own `min_score`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from civitas_ray.streams.timebase import F64Array

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution -> its standard deviation


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """Alarm threshold (|z|), warm-up length (readings) and tracker step."""

    threshold: float = 6.0
    warmup: int = 48
    rate: float = 0.02
    min_scale: float = 1e-9  # floor of the scale, so a flat residual does not divide by 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnomalyConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True, slots=True)
class AnomalyScores:
    """Per reading: signed robust z, its magnitude (the score) and the alarm."""

    z: F64Array
    score: F64Array
    is_anomaly: npt.NDArray[np.bool_]


class AnomalyDetector:
    """Online robust z-scores for one residual series.

    Checkpointed (`state_dict`): median, MAD, count and the warm-up sample. Rebuilt by
    replaying residuals otherwise (the warm-up then repeats: no alarms for a while).
    """

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.median = 0.0
        self.mad = 0.0
        self.n = 0
        self._warm: list[float] = []

    @property
    def warmed_up(self) -> bool:
        return self.n >= self.config.warmup

    def update(self, residuals: F64Array) -> AnomalyScores:
        """Score each residual against the estimates before it, then learn it.

        NaN residuals (no forecast yet) score NaN and are not learned.
        """
        res = np.asarray(residuals, dtype=np.float64).tolist()
        zs = [math.nan] * len(res)
        alarms = [False] * len(res)
        cfg = self.config
        floor, rate, thr, warmup = cfg.min_scale, cfg.rate, cfg.threshold, cfg.warmup
        med, mad, n = self.median, self.mad, self.n
        up, down = math.exp(rate), math.exp(-rate)
        for i, e in enumerate(res):
            if e != e:
                continue
            if n < warmup:
                zs[i] = self._warm_step(e, n)
                n += 1
                med, mad = self.median, self.mad
                continue
            scale = _MAD_TO_SIGMA * mad
            if scale < floor:
                scale = floor
            z = (e - med) / scale
            zs[i] = z
            alarms[i] = z >= thr or z <= -thr
            step = rate * scale
            if e > med:
                med += step
            elif e < med:
                med -= step
            dev = e - med if e >= med else med - e
            mad = mad * up if dev > mad else mad * down
            if mad < floor:
                mad = floor
            n += 1
        self.median, self.mad, self.n = med, mad, n
        z_arr = np.asarray(zs, dtype=np.float64)
        return AnomalyScores(z_arr, np.abs(z_arr), np.asarray(alarms, dtype=bool))

    def _warm_step(self, e: float, n: int) -> float:
        """Warm-up: score against the exact median/MAD of the residuals so far, keep e."""
        warm = self._warm
        z = math.nan
        if len(warm) >= 3:
            z = (e - self.median) / max(_MAD_TO_SIGMA * self.mad, self.config.min_scale)
        warm.append(e)
        if len(warm) >= 3:
            arr = np.asarray(warm)
            self.median = float(np.median(arr))
            self.mad = float(np.median(np.abs(arr - self.median)))
        if n + 1 >= self.config.warmup:
            self._warm = []
        return z

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "median": self.median, "mad": self.mad,
                "n": self.n, "warm": list(self._warm)}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> AnomalyDetector:
        det = cls(AnomalyConfig.from_dict(d["config"]))
        det.median, det.mad, det.n = float(d["median"]), float(d["mad"]), int(d["n"])
        det._warm = [float(x) for x in d["warm"]]
        return det
