#!/usr/bin/env bash
# What tasks_vs_celery.py compares against: Debian's redis-server and PyPI's celery (with its
# Redis client), installed here rather than on every machine: only this benchmark needs them.
set -euo pipefail
if ! command -v redis-server >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
python -m pip install -q "celery[redis]"
