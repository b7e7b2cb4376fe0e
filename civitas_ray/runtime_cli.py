"""Registers the runtime commands (up, down, demo, status) on the CLI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Filled in by civitas_ray.runtime; kept apart so `civitas db` never imports Ray."""
    try:
        from civitas_ray.runtime.commands import register as _register
    except ImportError:
        return
    _register(app)
