#!/usr/bin/env bash
# Set up a fresh checkout: a virtualenv with the package and its test tools, and the pinned
# PlayCanvas splat-transform (the independent SOG reader the tests compare against).
# Idempotent: re-running it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
# torch first, pinned to the CPU build these machines carry on disk (a bare `torch` would pull a multi-GB
# CUDA build); on a GPU machine install your CUDA torch before running this script and it is kept.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
# constraints.txt pins every dependency to the versions the tests last passed with (a fresh resolve of the
# s3fs / aiobotocore / boto3 / moto family otherwise backtracks for many minutes)
.venv/bin/pip install -q -c constraints.txt -e '.[dev]'
if [ -f tests/js/package.json ]; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
# the web viewer (PlayCanvas engine, pinned by web/package-lock.json), bundled into spaceport/viewer/static/
npm ci --prefix web --no-audit --no-fund --loglevel=error
npm run build --prefix web --silent
# the browser tests drive Debian's chromium through Playwright (never `playwright install`: no browser downloads)
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
# the service tests talk to real servers on loopback: Redis (Celery's broker) and PostgreSQL (the job store)
if ! command -v redis-server >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server postgresql
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis \
    --logfile /var/log/redis/ci.log
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
fi
