#!/usr/bin/env bash
# One idempotent set-up for civitas_ray: system packages, PostgreSQL extensions,
# running services, the database, the Python package in .venv, and the migrations.
# Fast when everything is already there; says what it did and what failed.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh --system   only system packages, extensions and services
#   scripts/setup.sh --python   only .venv and migrations
#   scripts/setup.sh --venv     only .venv (Ray worker nodes: no database access needed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PG_VERSION="${CIVITAS_PG_VERSION:-15}"
DB_NAME="${CIVITAS_DB_NAME:-civitas}"
VENV="${CIVITAS_VENV:-$ROOT/.venv}"
EXTRAS="${CIVITAS_EXTRAS:-dev,ml,ai}"
WORK="${CIVITAS_BUILD_DIR:-/tmp/civitas-build}"
MODE="${1:-all}"

say()  { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
ok()   { printf '\033[1;32m[setup]\033[0m %s\n' "$*"; }
fail() { printf '\033[1;31m[setup] FAILED:\033[0m %s\n' "$*" >&2; exit 1; }
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || fail "run as root or install sudo"
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  say "apt-get install ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_ext_dir() { echo "/usr/share/postgresql/$PG_VERSION/extension"; }

fetch_trixie_source() {
  # Debian 13's source packages build against PostgreSQL 15; use a private apt
  # state so the machine's own sources stay untouched.
  local pkg="$1" state="$WORK/src-apt"
  mkdir -p "$state/etc" "$state/lists/partial" "$state/cache"
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
  printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" > "$state/etc/trixie-src.sources"
  local o="-oDir::Etc::SourceList=/dev/null -oDir::Etc::SourceParts=$state/etc -oDir::State::Lists=$state/lists -oDir::Cache=$state/cache"
  [ -f "$state/.updated" ] || { apt-get $o update -qq && touch "$state/.updated"; }
  (cd "$WORK" && apt-get $o source --download-only "$pkg" >/dev/null)
}

install_pgvector() {
  if [ -f "$(pg_ext_dir)/vector.control" ]; then ok "pgvector present"; return; fi
  say "building pgvector for PostgreSQL $PG_VERSION"
  mkdir -p "$WORK"; fetch_trixie_source pgvector
  (cd "$WORK" && rm -rf pgvector-*/ && tar xzf pgvector_*.orig.tar.gz && cd pgvector-*/ \
     && make -s PG_CONFIG=/usr/lib/postgresql/$PG_VERSION/bin/pg_config >/dev/null \
     && $SUDO make -s install PG_CONFIG=/usr/lib/postgresql/$PG_VERSION/bin/pg_config >/dev/null)
  ok "pgvector installed"
}

install_timescaledb() {
  if [ -f "$(pg_ext_dir)/timescaledb.control" ]; then ok "timescaledb present"; return; fi
  say "building timescaledb (Apache-2 build) for PostgreSQL $PG_VERSION"
  mkdir -p "$WORK"; fetch_trixie_source timescaledb
  (cd "$WORK" && rm -rf timescaledb-*/ && tar xJf timescaledb_*.orig.tar.xz && cd timescaledb-*/ \
     && PATH=/usr/lib/postgresql/$PG_VERSION/bin:$PATH ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF -DAPACHE_ONLY=ON -DUSE_TELEMETRY=OFF >/dev/null \
     && make -s -C build -j"$(nproc)" >/dev/null && $SUDO make -s -C build install >/dev/null)
  ok "timescaledb installed"
}

pg_running() { pg_isready -q -h 127.0.0.1 -p 5432; }
start_postgres() {
  pg_running && return 0
  say "starting PostgreSQL $PG_VERSION"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start || true
  for _ in $(seq 1 30); do pg_running && return 0; sleep 1; done
  fail "PostgreSQL did not start"
}

configure_postgres() {
  local conf="/etc/postgresql/$PG_VERSION/main/conf.d/timescaledb.conf"
  # Queries a plan cannot bound in time lock every chunk of a hypertable: years of
  # imported history in daily chunks need more than the default 64 locks per transaction.
  local want
  want=$(printf '%s\n' "shared_preload_libraries = 'timescaledb'" \
    "timescaledb.telemetry_level = off" "max_locks_per_transaction = 1024")
  local restart=0
  if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    say "configuring PostgreSQL for timescaledb"
    printf '%s\n' "$want" | $SUDO tee "$conf" >/dev/null
    restart=1
  fi
  start_postgres
  if [ $restart -eq 1 ] || ! psql_admin -tAc "show shared_preload_libraries" | grep -q timescaledb \
      || [ "$(psql_admin -tAc 'show max_locks_per_transaction')" != 1024 ]; then
    say "restarting PostgreSQL to load timescaledb"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main restart
    for _ in $(seq 1 30); do pg_running && break; sleep 1; done
  fi
  ok "PostgreSQL $PG_VERSION running with timescaledb preloaded"
}

psql_admin() {
  if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then
    su postgres -c "psql -X -q -h 127.0.0.1 -d postgres $(printf '%q ' "$@")"
  else
    psql -X -q -h 127.0.0.1 -U postgres -d postgres "$@"
  fi
}

create_databases() {
  for db in "$DB_NAME" "${DB_NAME}_test"; do
    if ! psql_admin -tAc "select 1 from pg_database where datname='$db'" | grep -q 1; then
      say "creating database $db"
      psql_admin -c "create database $db"
    fi
  done
  ok "databases $DB_NAME and ${DB_NAME}_test ready"
}

start_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then ok "Redis running"; return; fi
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/civitas.log
  for _ in $(seq 1 20); do redis-cli ping >/dev/null 2>&1 && { ok "Redis started"; return; }; sleep 0.5; done
  fail "Redis did not start"
}

mqtt_up() { timeout 3 mosquitto_sub -h 127.0.0.1 -p 1883 -t '$SYS/broker/version' -C 1 -W 2 >/dev/null 2>&1; }
start_mosquitto() {
  if mqtt_up; then ok "Mosquitto running"; return; fi
  say "starting Mosquitto"
  local conf=/etc/mosquitto/mosquitto.conf
  if ! grep -q '^listener 1883' "$conf" 2>/dev/null; then
    conf="$WORK/mosquitto.conf"; mkdir -p "$WORK"
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\n' > "$conf"
  fi
  mosquitto -d -c "$conf"
  for _ in $(seq 1 20); do mqtt_up && { ok "Mosquitto started"; return; }; sleep 0.5; done
  fail "Mosquitto did not start"
}

system_setup() {
  local pkgs=(postgresql-server-dev-$PG_VERSION postgresql-$PG_VERSION-postgis-3 cmake libkrb5-dev libssl-dev
              build-essential dpkg-dev xz-utils redis-server redis-tools mosquitto mosquitto-clients
              postgresql-client-$PG_VERSION wrk)  # wrk: bench/ingest_http.py, bench/serve_vs_uvicorn.py
  command -v pg_ctlcluster >/dev/null || pkgs+=(postgresql-$PG_VERSION)
  apt_install "${pkgs[@]}"
  install_pgvector
  install_timescaledb
  configure_postgres
  create_databases
  start_redis
  start_mosquitto
}

python_setup() {
  local py="${CIVITAS_PYTHON:-}"
  if [ -z "$py" ]; then
    for c in python3.11 python3.12 python3; do command -v "$c" >/dev/null && { py="$c"; break; }; done
  fi
  [ -x "$VENV/bin/python" ] || { say "creating $VENV with $py"; "$py" -m venv "$VENV"; }
  # pip warns once per package about index locations this machine's pip.conf names
  # but does not have; the install is unaffected, so keep the log readable.
  local pip="$VENV/bin/python -m pip"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  local stamp="$VENV/.civitas-installed"
  local hash
  hash=$(cat pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
    ok "Python package already installed in $VENV"
  else
    $pip install -q --upgrade pip wheel 2>&1 | grep -v "is ignored: it is neither" || true
    # A CPU build of torch first: sentence-transformers would otherwise pull a multi-GB CUDA build.
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
      say "installing torch (CPU build)"
      { $pip install -q "torch==2.13.0" || $pip install -q "torch<=2.14.1"; } 2>&1 \
        | grep -v "is ignored: it is neither" || true
      "$VENV/bin/python" -c "import torch" || fail "torch did not install"
    fi
    say "installing civitas_ray[$EXTRAS] into $VENV"
    # llama-cpp-python (the `ai` extra) builds from source with cmake and g++ (apt list
    # above): a portable build, not one tuned to this CPU, so the venv works in images.
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
    $pip install -q -e ".[$EXTRAS]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
    echo "$hash" > "$stamp"
    ok "Python package installed"
  fi
}

migrate() {
  say "running migrations"
  CIVITAS_DATABASE__NAME="$DB_NAME" "$VENV/bin/civitas" db upgrade
  CIVITAS_DATABASE__NAME="${DB_NAME}_test" "$VENV/bin/civitas" db upgrade
  ok "migrations at head"
}

case "$MODE" in
  --system) system_setup ;;
  --python) python_setup; migrate ;;
  --venv) python_setup ;;
  all|--all) system_setup; python_setup; migrate ;;
  *) fail "unknown option $MODE (use --system, --python, --venv or nothing)" ;;
esac
ok "done"
