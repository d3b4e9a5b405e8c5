#!/usr/bin/env bash
# Bring this machine's Python to a working mmbeit stack, idempotently.
#
#   bash tools/install.sh            # runtime stack + mmbeit (editable)
#   bash tools/install.sh --tests    # ... plus the test dependencies (pytest, timm, ruff)
#
# It installs into the Python that `python3` (or $PYTHON) names: activate your venv or
# conda env first if you use one. Each step runs only when what it provides is missing,
# so a second run on an installed machine takes seconds. What it does, in order:
#   1. build tools (setuptools<82, wheel, ninja)
#   2. torch 2.13.0 + torchvision 0.28.0 from the package registry (CUDA build; it runs
#      on CPU-only machines too). A `+cpu` torch cannot import torchvision, so a CPU
#      build found here is replaced, and pip's find-links are turned off for this call
#      (some machines point find-links at a CPU build that pip would prefer).
#   3. mmcv 2.1.0 compiled from its sdist with ops (mmseg needs mmcv.ops). The wheel is
#      built once and cached in $MMBEIT_CACHE (default ~/.cache/mmbeit/wheels), keyed
#      by the torch and Python versions; later installs reuse it.
#      CPU ops by default; MMBEIT_MMCV_CUDA=1 builds the CUDA ops too (needs nvcc).
#   4. the rest of requirements/runtime.txt (mmengine, mmpretrain, mmseg, mmdet 3.3.0:
#      wheels only, under the same constraints), then mmbeit itself (pip install -e .)
#   5. a check: imports, one mmcv.ops call, the versions. On failure it says what and how.
# Nothing inside site-packages is patched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
CACHE="${MMBEIT_CACHE:-$HOME/.cache/mmbeit}"
WITH_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_TESTS=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$arg' (use --tests or --help)" >&2; exit 2 ;;
  esac
done

TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
MMCV_VERSION=2.1.0
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
# Keep every later pip call from moving the pinned core.
printf 'torch==%s\ntorchvision==%s\nmmcv==%s\nnumpy<2.4\nsetuptools<82\n' \
  "$TORCH_VERSION" "$TORCHVISION_VERSION" "$MMCV_VERSION" > "$CONSTRAINTS"

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
pip_() { PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

# Prints the installed version of a distribution, or nothing.
version_of() {
  "$PY" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

# True when every requirement line of a file is satisfied by what is installed.
satisfied() {
  "$PY" - "$@" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
for path in sys.argv[1:]:
    for line in open(path):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            sys.exit(1)
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            sys.exit(1)
EOF
}

"$PY" -c 'import sys; assert sys.version_info >= (3, 9)' 2>/dev/null \
  || die "mmbeit needs Python >= 3.9; '$PY' is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.X."

# 1. build tools
if ! satisfied "$ROOT/requirements/build.txt"; then
  log "installing build tools (setuptools<82, wheel, ninja)"
  pip_ -r "$ROOT/requirements/build.txt"
fi

# 2. torch + torchvision
have_torch="$(version_of torch)"
have_tv="$(version_of torchvision)"
if [[ "$have_torch" != "$TORCH_VERSION" || "$have_tv" != "$TORCHVISION_VERSION" ]]; then
  if [[ -n "$have_torch" && "$have_torch" != "$TORCH_VERSION" ]]; then
    log "replacing torch $have_torch with the registry's $TORCH_VERSION (torchvision $TORCHVISION_VERSION needs exactly that build)"
    "$PY" -m pip uninstall --quiet -y torch torchvision
  fi
  log "installing torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION from the registry (~2.6 GB the first time)"
  PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null \
    pip_ "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# 3. mmcv with compiled ops
# mmcv._ext is the compiled-ops extension (absent in mmcv-lite); found without importing torch.
has_ops() { "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("mmcv._ext") is None)' 2>/dev/null; }
if [[ "$(version_of mmcv)" != "$MMCV_VERSION" ]] || ! has_ops; then
  pytag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  flavour=cpu; [[ "${MMBEIT_MMCV_CUDA:-0}" == 1 ]] && flavour=cuda
  wheel_dir="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$pytag-$flavour"
  wheel="$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
  if [[ -z "$wheel" ]]; then
    log "compiling mmcv $MMCV_VERSION with $flavour ops (5-7 min on 2 cores, once; cached in $wheel_dir)"
    mkdir -p "$wheel_dir"
    build_tmp="$(mktemp -d)"
    if [[ "$flavour" == cpu ]]; then
      export FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=
    else
      export FORCE_CUDA=1
    fi
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not by the torch the ops
    # were compiled against, and would hand back a build for another torch. Ours is keyed.
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip wheel --quiet --no-deps \
      --no-cache-dir --no-build-isolation "mmcv==$MMCV_VERSION" -w "$build_tmp" \
      || die "building mmcv failed (see above). It needs a C++ compiler (apt-get install g++) and setuptools<82."
    mv "$build_tmp"/mmcv-*.whl "$wheel_dir"/   # moved whole: no half-written wheel in the cache
    rm -rf "$build_tmp"
    wheel="$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)"
  else
    log "installing cached mmcv wheel $wheel"
  fi
  pip_ --no-deps --force-reinstall "$wheel"
fi

# 4. the rest of the runtime stack, the test tools, and mmbeit itself
reqs=("$ROOT/requirements/runtime.txt")
[[ "$WITH_TESTS" == 1 ]] && reqs+=("$ROOT/requirements/tests.txt")
if ! satisfied "${reqs[@]}"; then
  log "installing ${reqs[*]##*/}"
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  pip_ -c "$CONSTRAINTS" "${args[@]}"
fi
# Asked from / so that the source tree in the current directory does not answer for it.
installed_at="$(cd / && "$PY" -c 'import importlib.util as u, os; s = u.find_spec("mmbeit"); print(os.path.dirname(os.path.dirname(os.path.abspath(s.origin))))' 2>/dev/null || true)"
if [[ "$installed_at" != "$ROOT" ]]; then
  log "installing mmbeit from $ROOT (editable)"
  pip_ --no-deps --no-build-isolation -e "$ROOT"
fi

# 5. verify
"$PY" "$ROOT/tools/misc/check_env.py" $([[ "$WITH_TESTS" == 1 ]] && echo --tests)
