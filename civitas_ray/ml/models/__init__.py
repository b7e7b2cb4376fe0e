"""Forecasting models, one module per domain, all on the shared feature pipeline."""

from __future__ import annotations

from civitas_ray.ml.models.base import ForecastModel, ModelError
from civitas_ray.ml.models.demand import DemandModel
from civitas_ray.ml.models.energy import EnergyModel
from civitas_ray.ml.models.incident import IncidentModel
from civitas_ray.ml.models.traffic import TrafficModel
from civitas_ray.ml.models.water import WaterModel

MODELS: dict[str, type[ForecastModel]] = {
    cls.name: cls
    for cls in (TrafficModel, EnergyModel, WaterModel, IncidentModel, DemandModel)
}

__all__ = ["MODELS", "DemandModel", "EnergyModel", "ForecastModel", "IncidentModel",
           "ModelError", "TrafficModel", "WaterModel"]
