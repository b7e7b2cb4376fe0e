"""Ray tier: one local Ray per test session, in its own namespace, torn down at the end."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local(migrated_db: str) -> Iterator[str]:
    """A local Ray whose workers see the test database (they inherit this environment)."""
    import ray

    from civitas_ray.config import get_settings

    namespace = "civitas-test-" + uuid.uuid4().hex[:6]
    os.environ["CIVITAS_RAY__NAMESPACE"] = namespace
    get_settings().ray.namespace = namespace
    # address="local": always a fresh cluster, never a developer's running one.
    ray.init(address="local", namespace=namespace, include_dashboard=False, num_cpus=2,
             log_to_driver=False, configure_logging=False)
    try:
        yield namespace
    finally:
        ray.shutdown()
