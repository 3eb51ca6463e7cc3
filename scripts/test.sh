#!/usr/bin/env bash
# Install everything into .venv and run the whole test suite with lint and type checks.
# Needs Python >= 3.11; PostgreSQL (DATABASE_URL) and Redis (REDIS_URL) for the store tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless Chromium for the admin page's browser test (Playwright drives the system browser;
# `playwright install` is never run). A no-op where it is already installed.
if [ ! -x /usr/bin/chromium ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver
fi

# HAProxy (Debian's package) for the multi-replica test (tests/test_replicas.py): installed when
# missing and the script may install packages; a no-op where it is present.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ] && command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    $SUDO apt-get install -y -q haproxy >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q haproxy >/dev/null; } \
        || echo "haproxy could not be installed: tests/test_replicas.py will skip (fail in CI)" >&2
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build of torch first: an unpinned torch (pulled in by sentence-transformers) is a
# multi-GB CUDA download.
python -m pip install -q torch==2.13.0
python -m pip install -q -c constraints.txt -e ".[test,train]"

export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff format --check .
ruff check .
mypy gateway ledger local_backend policies router
lint-imports  # .importlinter: gateway -> ledger -> policies -> router, the router's runtime apart
# Two processes (pytest-xdist; RIGHTSIZE_TEST_WORKERS=0 runs in one): most tests wait on servers,
# subprocesses and timers, so two share a 2-core host well. --dist loadfile keeps each file's
# tests in one process, its module-scoped servers started once.
python -m pytest -n "${RIGHTSIZE_TEST_WORKERS:-2}" --dist loadfile "$@"
