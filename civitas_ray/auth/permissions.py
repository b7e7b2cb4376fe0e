"""Roles and the permissions each one grants: the single source for routes and the DB seed."""

from __future__ import annotations

from enum import StrEnum


class Perm(StrEnum):
    TENANTS_ADMIN = "tenants:admin"  # every tenant: list, create, change, delete
    TENANT_READ = "tenant:read"  # one's own tenant
    TENANT_WRITE = "tenant:write"
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    API_KEYS_READ = "api_keys:read"
    API_KEYS_WRITE = "api_keys:write"
    ZONES_READ = "zones:read"
    ZONES_WRITE = "zones:write"
    ASSETS_READ = "assets:read"
    ASSETS_WRITE = "assets:write"
    INCIDENTS_READ = "incidents:read"
    INCIDENTS_WRITE = "incidents:write"
    AUDIT_READ = "audit:read"
    TELEMETRY_READ = "telemetry:read"
    TELEMETRY_INGEST = "telemetry:ingest"
    ML_READ = "ml:read"  # models, jobs, forecasts, backtests
    ML_TRAIN = "ml:train"  # start training jobs
    ML_PROMOTE = "ml:promote"  # promote, shadow, roll back model versions
    DOCUMENTS_READ = "documents:read"  # RAG documents, their sources and search
    DOCUMENTS_WRITE = "documents:write"  # upload, re-ingest, delete documents
    AI_RUN = "ai:run"  # run agents on demand (policy checks, recommendations, summaries)
    AI_READ = "ai:read"  # agent runs: inputs, answers, citations, models
    RECOMMENDATIONS_READ = "recommendations:read"
    RECOMMENDATIONS_DECIDE = "recommendations:decide"  # accept, reject, record outcomes
    TRANSIT_READ = "transit:read"  # transit feeds, vehicles, trips, delays, arrivals
    TRANSIT_WRITE = "transit:write"  # push GTFS-RT, import GTFS static, manage feeds


class RoleName(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    TENANT_ADMIN = "tenant_admin"
    OPERATOR = "operator"
    ANALYST = "analyst"
    VIEWER = "viewer"


_VIEW = {Perm.TENANT_READ, Perm.ZONES_READ, Perm.ASSETS_READ, Perm.INCIDENTS_READ,
         Perm.DOCUMENTS_READ, Perm.TRANSIT_READ}
# Analysts curate the document library that search and the agents cite.
_ANALYST = _VIEW | {Perm.TELEMETRY_READ, Perm.ML_READ, Perm.ML_TRAIN, Perm.DOCUMENTS_WRITE,
                    Perm.AI_READ, Perm.RECOMMENDATIONS_READ}
_OPERATOR = _ANALYST | {Perm.INCIDENTS_WRITE, Perm.TELEMETRY_INGEST, Perm.AI_RUN,
                        Perm.RECOMMENDATIONS_DECIDE, Perm.TRANSIT_WRITE}
_TENANT_ADMIN = _OPERATOR | {
    Perm.TENANT_WRITE, Perm.USERS_READ, Perm.USERS_WRITE, Perm.API_KEYS_READ,
    Perm.API_KEYS_WRITE, Perm.ZONES_WRITE, Perm.ASSETS_WRITE, Perm.AUDIT_READ, Perm.ML_PROMOTE,
}

ROLE_PERMISSIONS: dict[str, frozenset[Perm]] = {
    RoleName.PLATFORM_ADMIN: frozenset(Perm),
    RoleName.TENANT_ADMIN: frozenset(_TENANT_ADMIN),
    RoleName.OPERATOR: frozenset(_OPERATOR),
    RoleName.ANALYST: frozenset(_ANALYST),
    RoleName.VIEWER: frozenset(_VIEW),
}

ROLE_DESCRIPTIONS: dict[str, str] = {
    RoleName.PLATFORM_ADMIN: "Operates the platform: every tenant, every permission.",
    RoleName.TENANT_ADMIN: "Administers one tenant: users, keys, zones, assets, audit; "
                           "promotes and rolls back models.",
    RoleName.OPERATOR: "Control-room operator: handles incidents, reads live state.",
    RoleName.ANALYST: "Reads data and telemetry; trains models; curates documents.",
    RoleName.VIEWER: "Read-only view of zones, assets, incidents and documents.",
}

# What a device API key may do, whatever else it asks for.
API_KEY_PERMISSIONS: frozenset[Perm] = frozenset({Perm.TELEMETRY_INGEST})
