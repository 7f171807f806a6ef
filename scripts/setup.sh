#!/usr/bin/env bash
# Creates .venv in the repo and installs recurlm with its test tools. CPU torch is pinned first: an unpinned
# torch would pull GBs of CUDA packages. Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# The web chat's browser test drives Debian's chromium through its chromedriver (browser downloads fail here);
# where it cannot be installed (no root, no apt), that one test is skipped.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  packages="chromium chromium-driver"
  { apt-get install -y -q --no-install-recommends $packages || { apt-get update -q && apt-get install -y -q \
      --no-install-recommends $packages; }; } >/dev/null 2>&1 || echo "note: no chromium; the browser test will skip"
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
[ -f "$stamp" ] && exit 0
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/recurlm presets >/dev/null  # fails loudly if the install did not work
rm -f .venv/.installed-* && touch "$stamp"
