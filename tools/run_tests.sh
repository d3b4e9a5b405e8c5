#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs the whole test suite,
# the tests marked slow included (a plain `python -m pytest tests` leaves them out).
#   bash tools/run_tests.sh [pytest args ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/install.sh" --tests
cd "$ROOT"
exec "${PYTHON:-python3}" -m pytest -q --run-slow "$@"
