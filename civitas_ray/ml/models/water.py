"""Water usage per meter group or district, hourly."""

from __future__ import annotations

from typing import ClassVar

from civitas_ray.ml.features import FeatureSpec
from civitas_ray.ml.models.base import ForecastModel, hourly_spec


class WaterModel(ForecastModel):
    """District consumption is a sum of household use: a strong daily shape, weekends,
    and spikes that are not to be chased (the hold-out MAE is better un-normalized)."""

    name: ClassVar[str] = "water"
    default_spec: ClassVar[FeatureSpec] = hourly_spec()
    nonnegative: ClassVar[bool] = True
