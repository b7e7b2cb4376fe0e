"""The demo city: a tenant with three users, a device key, the five NYC boroughs as zones
and a handful of assets in each, created through the services (audited like any change).

Seeding converges instead of appending: what exists (found by tenant slug, e-mail, key
name, zone code, asset external id) is kept, only what is missing is created, and a
demo user whose password no longer matches the configured one gets it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry
from shapely.prepared import prep
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.auth.permissions import RoleName
from civitas_ray.auth.security import API_KEY_PREFIX
from civitas_ray.config import Settings

logger = logging.getLogger(__name__)

PASSWORD_ENV = "CIVITAS_DEMO_PASSWORD"  # noqa: S105 - the variable's name
# Meets the password policy; printed by `civitas demo`; refused in production.
DEFAULT_PASSWORD = "Civitas-Demo-City-2024"  # noqa: S105
BOROUGHS_FILE = Path("geo") / "nyc_boroughs.geojson"
API_KEY_NAME = "demo sensor fleet"
ZONE_KIND = "borough"

# (role, e-mail local part, full name)
USERS: tuple[tuple[RoleName, str, str], ...] = (
    (RoleName.TENANT_ADMIN, "admin", "Demo Administrator"),
    (RoleName.OPERATOR, "operator", "Control-Room Operator"),
    (RoleName.VIEWER, "viewer", "Dashboard Viewer"),
)


@dataclass(frozen=True, slots=True)
class AssetTemplate:
    key: str  # part of the external id: demo-<zone code>-<key>
    kind: str  # an AssetKind value
    label: str
    metrics: dict[str, dict[str, Any]]
    properties: dict[str, Any] = field(default_factory=dict)


# What a small sensor deployment per borough measures, with physical ranges that the
# data-quality flags use: readings outside them are suspect, not merely unusual.
ASSETS: tuple[AssetTemplate, ...] = (
    AssetTemplate("traffic", "sensor", "traffic counter", {
        "traffic_volume": {"unit": "veh/h", "min": 0, "max": 10_000},
        "average_speed": {"unit": "km/h", "min": 0, "max": 160}},
        {"technology": "inductive loop"}),
    AssetTemplate("air", "sensor", "air quality monitor", {
        "pm2_5": {"unit": "µg/m³", "min": 0, "max": 1_000},
        "no2": {"unit": "µg/m³", "min": 0, "max": 2_000}}),
    AssetTemplate("noise", "sensor", "noise monitor", {
        "sound_level": {"unit": "dB(A)", "min": 20, "max": 140}}),
    AssetTemplate("power", "meter", "substation power meter", {
        "active_power": {"unit": "kW", "min": 0, "max": 50_000},
        "energy": {"unit": "kWh", "min": 0, "max": None}}),
    AssetTemplate("weather", "weather_station", "weather station", {
        "air_temperature": {"unit": "°C", "min": -40, "max": 60},
        "relative_humidity": {"unit": "%", "min": 0, "max": 100},
        "wind_speed": {"unit": "m/s", "min": 0, "max": 75},
        "precipitation": {"unit": "mm/h", "min": 0, "max": 300}}),
)


class DemoError(RuntimeError):
    """The demo cannot be seeded as asked; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class DemoPassword:
    value: str
    from_env: bool


def demo_password(settings: Settings, environ: Mapping[str, str] = os.environ) -> DemoPassword:
    """CIVITAS_DEMO_PASSWORD, else the documented default, which production refuses."""
    value = environ.get(PASSWORD_ENV) or ""
    if settings.environment == "production" and value in ("", DEFAULT_PASSWORD):
        raise DemoError(f"refusing the default demo password in production: set {PASSWORD_ENV}")
    return DemoPassword(value or DEFAULT_PASSWORD, from_env=bool(value))


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    code: str
    name: str
    properties: dict[str, Any]
    geometry: dict[str, Any]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def borough_zones(data_dir: Path) -> list[ZoneSpec]:
    """The five NYC boroughs (NYC Open Data, WGS84) as zone specs, ordered by borough code."""
    path = data_dir / BOROUGHS_FILE
    try:
        collection = json.loads(path.read_text())
    except OSError as exc:
        raise DemoError(f"city data not found at {path}: set CIVITAS_DATA_DIR to the folder "
                        "holding geo/nyc_boroughs.geojson") from exc
    specs = []
    for feature in collection["features"]:
        props = feature["properties"]
        specs.append(ZoneSpec(
            code=f"nyc-{_slug(props['BoroName'])}", name=props["BoroName"],
            properties={"boro_code": props["BoroCode"], "source": "NYC Open Data, "
                        "Borough Boundaries (nyc_boroughs.geojson)"},
            geometry=feature["geometry"]))
    return sorted(specs, key=lambda z: z.properties["boro_code"])


def point_inside(geometry: BaseGeometry, seed: str) -> tuple[float, float]:
    """A point inside GEOMETRY, the same for the same seed on every run and machine."""
    rng = random.Random(seed)  # noqa: S311 - placement, not security
    inside = prep(geometry)
    min_x, min_y, max_x, max_y = geometry.bounds
    for _ in range(10_000):
        lon = round(rng.uniform(min_x, max_x), 6)
        lat = round(rng.uniform(min_y, max_y), 6)
        if inside.contains(Point(lon, lat)):
            return lon, lat
    point = geometry.representative_point()
    return round(point.x, 6), round(point.y, 6)


def user_email(local_part: str, tenant_slug: str) -> str:
    return f"{local_part}@{tenant_slug}.example.org"


@dataclass(slots=True)
class DemoCity:
    """What the demo tenant holds after seeding, and what this run had to create."""

    tenant_slug: str
    tenant_id: uuid.UUID
    users: list[tuple[str, str]] = field(default_factory=list)  # (role, e-mail)
    api_key_prefix: str = ""
    api_key: str | None = None  # the secret, only in the run that created the key
    zones: int = 0
    assets: int = 0
    created: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.created[what] = self.created.get(what, 0) + 1

    def summary(self) -> str:
        made = ", ".join(f"{n} {what.replace('_', ' ')}"
                         for what, n in self.created.items()) or "nothing"
        return (f"demo city '{self.tenant_slug}': {len(self.users)} users, 1 device API key, "
                f"{self.zones} zones, {self.assets} assets (created now: {made})")


def credentials_text(city: DemoCity, *, password_from_env: bool) -> str:
    password = f"the value of {PASSWORD_ENV}" if password_from_env else DEFAULT_PASSWORD
    lines = [f"Demo tenant '{city.tenant_slug}', password for every user: {password}"]
    lines += [f"  {role:<13} {email}" for role, email in city.users]
    if city.api_key:
        lines.append(f"  device API key (X-API-Key, shown once): {city.api_key}")
    else:
        lines.append(f"  device API key '{API_KEY_NAME}' ({city.api_key_prefix}_...) was "
                     "created earlier; its secret was shown then. Make another with "
                     f"`civitas admin create-api-key --tenant {city.tenant_slug} --name ...`")
    lines.append("  sign in: POST /api/v1/auth/token (form fields username, password)")
    return "\n".join(lines)


async def _all(list_fn: Any, **kwargs: Any) -> list[Any]:
    """Every row a service's paged list_ returns (list_ gives (rows, total))."""
    rows: list[Any] = []
    while True:
        page, total = await list_fn(limit=500, offset=len(rows), **kwargs)
        rows.extend(page)
        if not page or len(rows) >= total:
            return rows


async def _seed_users(session: AsyncSession, city: DemoCity, password: str) -> None:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.auth.security import verify_password
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import UserCreate, UserUpdate

    for role, local, full_name in USERS:
        email = user_email(local, city.tenant_slug)
        found = [u for u in (await users.list_(session=session, limit=10, offset=0, q=email))[0]
                 if u.email == email]
        if not found:
            await users.create(session=session, tenant_id=city.tenant_id, actor=SYSTEM_ACTOR,
                               data=UserCreate(email=email, password=password, role=role,
                                               full_name=full_name))
            city.count("users")
        elif not verify_password(password, found[0].password_hash):
            await users.update(session=session, user=found[0], actor=SYSTEM_ACTOR,
                               data=UserUpdate(password=password))
            city.count("password_resets")
        city.users.append((str(role), email))


async def _seed_api_key(session: AsyncSession, city: DemoCity) -> None:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import ApiKeyCreate

    keys = await _all(users.list_api_keys, session=session)
    existing = next((k for k in keys if k.name == API_KEY_NAME), None)
    if existing is None:
        row, city.api_key = await users.create_api_key(
            session=session, tenant_id=city.tenant_id, data=ApiKeyCreate(name=API_KEY_NAME),
            actor=SYSTEM_ACTOR, created_by=None)
        city.api_key_prefix = f"{API_KEY_PREFIX}_{row.prefix}"
        city.count("api_keys")
    else:
        city.api_key_prefix = f"{API_KEY_PREFIX}_{existing.prefix}"


async def _seed_places(session: AsyncSession, city: DemoCity, data_dir: Path) -> None:
    from civitas_ray.assets import service as assets
    from civitas_ray.assets.schemas import AssetCreate
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.zones import service as zones
    from civitas_ray.zones.schemas import ZoneCreate

    tid = city.tenant_id
    zone_codes = {z.code for z, _ in await _all(zones.list_, session=session, tenant_id=tid)}
    asset_ids = {a.external_id for a, _ in await _all(assets.list_, session=session,
                                                       tenant_id=tid)}
    for spec in borough_zones(data_dir):
        if spec.code not in zone_codes:
            await zones.create(session=session, tenant_id=tid, actor=SYSTEM_ACTOR,
                               data=ZoneCreate(name=spec.name, code=spec.code, kind=ZONE_KIND,
                                               properties=spec.properties,
                                               geometry=spec.geometry))
            city.count("zones")
        city.zones += 1
        area = shape(spec.geometry)
        for template in ASSETS:
            external_id = f"demo-{spec.code}-{template.key}"
            if external_id not in asset_ids:
                lon, lat = point_inside(area, external_id)
                await assets.create(session=session, tenant_id=tid, actor=SYSTEM_ACTOR,
                                    data=AssetCreate(
                                        name=f"{spec.name} {template.label}", kind=template.kind,
                                        external_id=external_id, metrics=template.metrics,
                                        properties={**template.properties, "demo": True},
                                        geometry={"type": "Point", "coordinates": [lon, lat]}))
                city.count("assets")
            city.assets += 1


async def seed_into(session: AsyncSession, *, tenant_slug: str, password: str,
                    data_dir: Path) -> DemoCity:
    """Create whatever of the demo city is missing, in the caller's transaction.

    Looks across tenants first (system context), then works inside the demo tenant.
    """
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import set_context
    from civitas_ray.tenants import service as tenants
    from civitas_ray.tenants.schemas import TenantCreate
    from civitas_ray.users import service as users

    await set_context(session, tenant_id=None, system=True)
    tenant = await tenants.get_by_slug(session=session, slug=tenant_slug)
    created_tenant = tenant is None
    if tenant is None:
        tenant = await tenants.create(session=session, actor=SYSTEM_ACTOR, data=TenantCreate(
            slug=tenant_slug, name=f"Demo city ({tenant_slug})"))
    city = DemoCity(tenant_slug=tenant_slug, tenant_id=tenant.id)
    if created_tenant:
        city.count("tenant")
    # E-mail addresses are unique across tenants: say so plainly instead of failing on
    # the unique index once the session only sees the demo tenant.
    for _, local, _ in USERS:
        email = user_email(local, tenant_slug)
        owners = {u.tenant_id for u in (await users.list_(
            session=session, limit=10, offset=0, q=email))[0] if u.email == email}
        if owners - {tenant.id}:
            raise DemoError(f"{email} belongs to another tenant; pick another --tenant slug")
    await set_context(session, tenant_id=tenant.id)
    await _seed_users(session, city, password)
    await _seed_api_key(session, city)
    await _seed_places(session, city, data_dir)
    logger.info("demo city seeded", extra={"tenant": tenant_slug, "created": city.created})
    return city


async def seed(*, tenant_slug: str, password: str, data_dir: Path) -> DemoCity:
    """`seed_into` in a transaction of its own: the whole city or nothing."""
    from civitas_ray.db.session import tenant_session

    async with tenant_session(None, system=True) as session:
        return await seed_into(session, tenant_slug=tenant_slug, password=password,
                               data_dir=data_dir)


def seed_sync(settings: Settings, *, tenant_slug: str, password: DemoPassword) -> DemoCity:
    """`seed` for the command line: its own event loop, pools closed before returning."""
    from civitas_ray.cache import close_redis
    from civitas_ray.db.session import dispose_engine

    async def run() -> DemoCity:
        try:
            return await seed(tenant_slug=tenant_slug, password=password.value,
                              data_dir=settings.data_dir)
        finally:
            await dispose_engine()
            await close_redis()

    return asyncio.run(run())
