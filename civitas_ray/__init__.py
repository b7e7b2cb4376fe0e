"""civitas_ray: actor-based real-time control server for smart cities."""

__version__ = "0.1.0"
