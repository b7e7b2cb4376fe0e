"""The demo city seeder: what it creates, that a second run creates nothing, and its
password rules. Runs in the rolled-back test session, so it leaves nothing behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.assets import service as assets
from civitas_ray.config import Settings
from civitas_ray.db.session import set_context
from civitas_ray.runtime import demo
from civitas_ray.runtime.demo import DemoError, DemoPassword
from civitas_ray.users import service as users
from civitas_ray.zones import service as zones
from tests.conftest import PASSWORD

pytestmark = pytest.mark.db


async def _counts(s: AsyncSession, tenant_id: uuid.UUID) -> dict[str, int]:
    await set_context(s, tenant_id=tenant_id)
    return {
        "users": (await users.list_(session=s, limit=1, offset=0))[1],
        "api_keys": (await users.list_api_keys(session=s, limit=1, offset=0))[1],
        "zones": (await zones.list_(session=s, tenant_id=tenant_id, limit=1, offset=0))[1],
        "assets": (await assets.list_(session=s, tenant_id=tenant_id, limit=1, offset=0))[1],
    }


async def test_seeding_twice_creates_nothing_new(db_session: AsyncSession,
                                                 data_dir: Path) -> None:
    slug = "demo-" + uuid.uuid4().hex[:8]
    first = await demo.seed_into(db_session, tenant_slug=slug, password=PASSWORD,
                                 data_dir=data_dir)
    after_first = await _counts(db_session, first.tenant_id)
    second = await demo.seed_into(db_session, tenant_slug=slug, password=PASSWORD,
                                  data_dir=data_dir)
    after_second = await _counts(db_session, first.tenant_id)

    expected = {"users": 3, "api_keys": 1, "zones": 5, "assets": 5 * len(demo.ASSETS)}
    assert after_first == after_second == expected
    assert first.created == {"tenant": 1, **expected}
    assert first.api_key and first.api_key.startswith(first.api_key_prefix)
    assert second.tenant_id == first.tenant_id and second.created == {}
    assert second.api_key is None and second.api_key_prefix == first.api_key_prefix
    assert [role for role, _ in second.users] == ["tenant_admin", "operator", "viewer"]


async def test_every_asset_lies_in_its_borough(db_session: AsyncSession,
                                               data_dir: Path) -> None:
    city = await demo.seed_into(db_session, tenant_slug="demo-" + uuid.uuid4().hex[:8],
                                password=PASSWORD, data_dir=data_dir)
    await set_context(db_session, tenant_id=city.tenant_id)
    codes = {z.id: z.code for z, _ in
             (await zones.list_(session=db_session, tenant_id=city.tenant_id, limit=50,
                                offset=0))[0]}
    rows, _ = await assets.list_(session=db_session, tenant_id=city.tenant_id, limit=100,
                                 offset=0)
    metrics = {t.key: set(t.metrics) for t in demo.ASSETS}
    for asset, _ in rows:
        # external ids read demo-<zone code>-<template key>: the derived zone must be that one.
        prefix = f"demo-{codes[asset.zone_id]}-"
        assert asset.external_id.startswith(prefix), asset.external_id
        assert set(asset.metrics) == metrics[asset.external_id.removeprefix(prefix)]
        assert all("unit" in m for m in asset.metrics.values())


async def test_changed_password_is_applied_on_the_next_run(db_session: AsyncSession,
                                                           data_dir: Path) -> None:
    slug = "demo-" + uuid.uuid4().hex[:8]
    await demo.seed_into(db_session, tenant_slug=slug, password=PASSWORD, data_dir=data_dir)
    again = await demo.seed_into(db_session, tenant_slug=slug, password=PASSWORD + "-x",
                                 data_dir=data_dir)
    assert again.created == {"password_resets": 3}


def test_default_password_is_refused_in_production() -> None:
    prod = Settings(environment="production", auth={"secret_key": "s" * 40})
    with pytest.raises(DemoError):
        demo.demo_password(prod, environ={})
    with pytest.raises(DemoError):
        demo.demo_password(prod, environ={demo.PASSWORD_ENV: demo.DEFAULT_PASSWORD})
    assert demo.demo_password(prod, environ={demo.PASSWORD_ENV: PASSWORD}) == DemoPassword(
        PASSWORD, from_env=True)
    dev = Settings(environment="development")
    assert demo.demo_password(dev, environ={}) == DemoPassword(demo.DEFAULT_PASSWORD,
                                                               from_env=False)


def test_default_password_meets_the_policy() -> None:
    from civitas_ray.auth.security import password_problems

    for _, local, _ in demo.USERS:
        email = demo.user_email(local, "demo")
        assert password_problems(demo.DEFAULT_PASSWORD, email=email, min_length=12) == []
