#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against the real services.
#   scripts/test.sh                 everything (unit, db, ray, e2e, slow)
#   scripts/test.sh -m "not slow"   any pytest arguments
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
