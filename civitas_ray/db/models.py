"""Imports every ORM model so the metadata (and Alembic) sees all tables."""

from civitas_ray.ai.agents.models import AgentRun
from civitas_ray.alerts.models import Alert, AlertRule
from civitas_ray.assets.models import Asset
from civitas_ray.audit.models import AuditLog
from civitas_ray.auth.models import ApiKey, AppUser, RefreshToken, Role
from civitas_ray.db.base import TENANT_TABLES, Base
from civitas_ray.documents.models import Document, DocumentChunk
from civitas_ray.incidents.models import Incident, IncidentEvent
from civitas_ray.ml.registry_models import MlJob, ModelVersion
from civitas_ray.recommendations.models import Recommendation
from civitas_ray.telemetry.models import Telemetry, TelemetryRollup
from civitas_ray.tenants.models import Tenant
from civitas_ray.transit.models import (
    GtfsAgency,
    GtfsCalendar,
    GtfsCalendarDate,
    GtfsRoute,
    GtfsShape,
    GtfsStop,
    GtfsStopTime,
    GtfsTrip,
    TransitFeed,
    TransitFeedVersion,
    TransitTripUpdate,
    TransitVehiclePosition,
)
from civitas_ray.zones.models import Zone

__all__ = [
    "TENANT_TABLES", "AgentRun", "Alert", "AlertRule", "ApiKey", "AppUser", "Asset", "AuditLog",
    "Base", "Document", "DocumentChunk", "GtfsAgency", "GtfsCalendar", "GtfsCalendarDate",
    "GtfsRoute", "GtfsShape", "GtfsStop", "GtfsStopTime", "GtfsTrip", "Incident", "IncidentEvent",
    "MlJob", "ModelVersion", "Recommendation", "RefreshToken", "Role", "Telemetry",
    "TelemetryRollup", "Tenant", "TransitFeed", "TransitFeedVersion", "TransitTripUpdate",
    "TransitVehiclePosition", "Zone",
]
