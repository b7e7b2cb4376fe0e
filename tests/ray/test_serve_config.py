"""serve_config.yaml and what `civitas up` makes of it, checked without starting Ray:
Serve's own schema accepts it, overrides land where they should, and only settings
variables travel to the replicas."""

from __future__ import annotations

from pathlib import Path

import pytest

from civitas_ray.config import Settings
from civitas_ray.runtime import control, serving

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_config.yaml"


def test_serve_config_is_valid_and_says_how_civitas_runs() -> None:
    config = serving.load_config(CONFIG)
    assert (config.http_options.host, config.http_options.port) == ("127.0.0.1", 8000)
    [app] = [a for a in config.applications if a.name == "civitas"]
    assert (app.name, app.route_prefix, app.import_path) == (
        "civitas", "/", "civitas_ray.serve.app:build")
    [ingress] = app.deployments
    autoscaling = ingress.autoscaling_config
    assert ingress.name == "Ingress" and autoscaling["min_replicas"] == 1
    assert autoscaling["max_replicas"] >= 1 and autoscaling["target_ongoing_requests"] > 0
    assert 0 < ingress.ray_actor_options.num_cpus <= 1


def test_overrides_and_env_pass_through(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVITAS_DATABASE__NAME", "civitas_elsewhere")
    monkeypatch.setenv("CIVITAS_DEMO_PASSWORD", "not-for-replicas")
    monkeypatch.delenv("CIVITAS_LOG_JSON", raising=False)
    (tmp_path / ".env").write_text("CIVITAS_LOG_LEVEL=DEBUG\nCIVITAS_DATABASE__NAME=loses\n")
    env = serving.settings_env(env_file=tmp_path / ".env")
    assert env["CIVITAS_DATABASE__NAME"] == "civitas_elsewhere"  # the environment wins
    assert env["CIVITAS_LOG_LEVEL"] == "DEBUG"
    assert "CIVITAS_DEMO_PASSWORD" not in env

    config = serving.load_config(CONFIG, host="0.0.0.0", port=8765, env_vars=env)
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 8765)
    env_vars = config.applications[0].runtime_env["env_vars"]
    assert env_vars["CIVITAS_DATABASE__NAME"] == "civitas_elsewhere"
    assert env_vars["CIVITAS_LOG_JSON"] == "true"  # the YAML's value where the caller has none
    assert serving.base_url("0.0.0.0", 8765) == "http://127.0.0.1:8765"


def test_a_broken_config_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - name: civitas\n    route_prefix: 5\n")
    with pytest.raises(serving.DeployError):
        serving.load_config(bad)
    with pytest.raises(serving.DeployError):
        serving.load_config(tmp_path / "missing.yaml")


def test_command_line_beats_settings_beats_yaml() -> None:
    settings = Settings(serve={"port": 9001})
    t = control.target(settings)
    assert (t.address, t.joining, t.host, t.http_port) == ("127.0.0.1:6389", False, None, 9001)
    t = control.target(settings, http_port=9002, port=6400)
    assert (t.address, t.http_port) == ("127.0.0.1:6400", 9002)
    t = control.target(Settings(), address="10.0.0.5:6389")
    assert t.joining and t.cluster_host == "10.0.0.5" and t.http_port is None


def test_the_builder_binds_the_ingress() -> None:
    from ray.serve import Application

    from civitas_ray.serve.app import BuildArgs, Ingress, build

    app = build(BuildArgs())
    assert isinstance(app, Application)
    assert Ingress.name == "Ingress"
    with pytest.raises(ValueError):
        BuildArgs.model_validate({"unknown": 1})
