#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine, then runs them all.
# Needs: the Rust toolchain, git, Python 3 with pip. Installs from PyPI:
# PyYAML (to check that accelerate's YAML reader reads what plasma writes)
# and uv (so the venv tests cover the uv installer as well as pip).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --user --quiet --disable-pip-version-check pyyaml uv
PATH="$(python3 -m site --user-base)/bin:$PATH"
export PATH

git --version
python3 --version
uv --version

cargo test
