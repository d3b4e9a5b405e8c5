#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs the whole test suite,
# the tests marked slow included (a plain `python -m pytest tests` leaves them out).
#   bash tools/run_tests.sh [pytest args ...]
# Test files are spread over MMBEIT_TEST_WORKERS processes (pytest-xdist, default 2; 0 runs
# them in this process). Each file stays in one worker (--dist loadfile), so a module's
# fixtures (a trained checkpoint, a built model) are made once. Most of the suite's time is
# single-threaded (tool runs in fresh processes spend seconds importing the stack), which
# two workers overlap on two cores. The 15 slowest tests are listed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/install.sh" --tests
cd "$ROOT"
WORKERS="${MMBEIT_TEST_WORKERS:-2}"
XDIST=()
[[ "$WORKERS" != 0 ]] && XDIST=(-n "$WORKERS" --dist loadfile)
exec "${PYTHON:-python3}" -m pytest -q --run-slow --durations=15 "${XDIST[@]}" "$@"
