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
.venv/bin/pip install -q -e '.[dev]'
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
