# civitas_ray in one image: the package, the Ray runtime, the migrations and the Serve
# config. `civitas demo` (the default command) migrates, seeds the demo city, starts a
# Ray head inside the container and serves on 8000; `civitas up` skips the demo data.
# Configure it with CIVITAS_* variables (docker-compose.yml shows them).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1 forwards `docker stop`'s SIGTERM to civitas, which then takes Serve and
# Ray down in order, and reaps Ray's exited processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 civitas

WORKDIR /app
# Dependencies first, so code changes do not reinstall them. An editable install keeps
# the package beside migrations/ and alembic.ini, where civitas_ray.db.migrate finds them.
COPY pyproject.toml README.md ./
COPY civitas_ray ./civitas_ray
RUN pip install -e . && chown -R civitas:civitas /app
COPY alembic.ini serve_config.yaml ./
COPY migrations ./migrations

USER civitas
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["civitas", "demo", "--host", "0.0.0.0"]
