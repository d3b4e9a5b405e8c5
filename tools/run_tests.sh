#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs the test suite.
#   bash tools/run_tests.sh [pytest args ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/install.sh" --tests
cd "$ROOT"
exec "${PYTHON:-python3}" -m pytest -q "$@"
