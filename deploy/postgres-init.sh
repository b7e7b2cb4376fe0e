#!/usr/bin/env bash
# First start of an empty data volume only (docker-entrypoint-initdb.d): the login role
# the application uses, with a password, since connections between containers are not
# trusted. The migrations create everything else (extensions, tables, row-level
# security, grants) when `civitas demo` or `civitas db upgrade` runs.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_password="$CIVITAS_APP_DB_PASSWORD" <<'SQL'
create role civitas_app login password :'app_password';
SQL
