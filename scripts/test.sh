#!/usr/bin/env bash
# Sets up what the tests need on a fresh machine, then runs them.
#
# Needs: the Rust toolchain (1.95 or newer), git, and Python 3 with its venv
# module (on Debian and Ubuntu: `apt install python3-venv`). The Python tools
# the tests use -- PyYAML (to check that accelerate's YAML reader reads what
# plasma writes) and uv (so the venv tests cover the uv installer as well as
# pip) -- go into a virtual environment this script creates, .venv-test/,
# whose bin/ comes first on PATH: stock Debian 12 and Ubuntu 24.04 Pythons
# refuse `pip install --user` (PEP 668, externally-managed-environment).
#
# Arguments go to `cargo test`, e.g. `bash scripts/test.sh --test it diagnostics::`.
# PLASMA_TEST_SETUP_ONLY=1 sets up and stops before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/.venv-test"
if [ ! -x "$venv/bin/python3" ]; then
    python3 -m venv "$venv" || {
        echo "error: cannot create $venv; install Python's venv module (apt install python3-venv)" >&2
        exit 1
    }
fi
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check pyyaml uv
PATH="$venv/bin:$PATH"
export PATH

git --version
python3 --version
python3 -c 'import yaml; print("PyYAML", yaml.__version__)'
uv --version

if [ "${PLASMA_TEST_SETUP_ONLY:-}" = 1 ]; then
    exit 0
fi
cargo test "$@"
