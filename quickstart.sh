#!/usr/bin/env bash
# lora3d quick start.
#   ./quickstart.sh          set up .venv, then open the wizard (a terminal) or run the built-in demo (no terminal)
#   ./quickstart.sh test     set up .venv, then run the test suite (the command CI runs; extra args go to pytest)
#   ./quickstart.sh slow     set up .venv, then run only the slow tests (CI's second step)
# A second run reuses .venv and skips installing when nothing changed.
set -euo pipefail
cd "$(dirname "$0")"

MODE="${1:-run}"
VENV=.venv
PYTHON="${PYTHON:-python3}"
say() { printf '\033[1mquickstart:\033[0m %s\n' "$*"; }
die() { printf '\033[1;31mquickstart:\033[0m %s\n' "$*" >&2; exit 2; }

case "$MODE" in run|test|slow) ;; *) die "unknown mode '$MODE'. Use: ./quickstart.sh [test|slow]";; esac

command -v "$PYTHON" >/dev/null || die "$PYTHON not found. Install Python 3.10 or newer (or set PYTHON=/path/to/python3)."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "Python 3.10+ is needed, found $("$PYTHON" -V 2>&1). Set PYTHON=/path/to/python3.11."

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)."
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# 1. torch: CUDA wheels only where an NVIDIA driver is present; elsewhere the CPU build, because an
#    unpinned torch on a GPU-less machine pulls several GB of CUDA packages.
if ! "$PY" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    say "NVIDIA driver found: installing torch with CUDA"
    "${PIP[@]}" "torch>=2.3,<2.14"
  else
    say "no NVIDIA driver: installing the CPU build of torch"
    # A CPU wheel pip already knows locally (find-links) first, its dependencies then from the usual
    # index; otherwise the PyTorch CPU index.
    if "${PIP[@]}" --no-index --no-deps "torch==2.13.0+cpu" 2>/dev/null; then
      "${PIP[@]}" "torch==2.13.0+cpu"
    else
      "${PIP[@]}" --retries 2 --timeout 30 "torch>=2.3,<2.14" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple \
        || die "could not install torch. Install a CPU build by hand: pip install torch --index-url https://download.pytorch.org/whl/cpu"
    fi
  fi
fi
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')

# 2. lora3d and its dependencies, with torch held at the installed version. Skipped when pyproject.toml
#    is unchanged since the last install (the stamp records its hash).
STAMP="$VENV/.lora3d-install-stamp"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) torch=$TORCH_VERSION"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  say "installing lora3d and its dependencies (torch held at $TORCH_VERSION)"
  CONSTRAINTS=$(mktemp)
  echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
  "${PIP[@]}" -c "$CONSTRAINTS" -e ".[dev]" || { rm -f "$CONSTRAINTS"; die "pip install failed (see above)."; }
  rm -f "$CONSTRAINTS"
  echo "$WANT" > "$STAMP"
else
  say "environment up to date ($VENV, torch $TORCH_VERSION)"
fi

"$PY" - <<'PYCHECK' || die "dependency check failed (see above). Delete $VENV and rerun ./quickstart.sh."
import importlib, sys
missing = [m for m in ("torch", "peft", "accelerate", "diffusers", "transformers", "safetensors", "pydantic",
                       "yaml", "rich", "questionary", "textual", "plyfile", "trimesh", "skimage", "pynvml",
                       "engine", "wizard") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing modules: {', '.join(missing)}")
PYCHECK

case "$MODE" in
  test)
    say "running the test suite (slow tests excluded; ./quickstart.sh slow runs them)"
    shift
    exec "$PY" -m pytest -m "not slow" -q -p no:cacheprovider "$@"
    ;;
  slow)
    say "running the slow tests"
    shift
    exec "$PY" -m pytest -m slow -q -p no:cacheprovider "$@"
    ;;
  run)
    if [ -t 0 ] && [ -t 1 ]; then
      say "opening the wizard (press Enter on every screen to run the built-in demo)"
      exec "$VENV/bin/lora3d" wizard
    else
      say "no terminal: running the built-in demo headlessly"
      exec "$VENV/bin/lora3d" demo scenesplat
    fi
    ;;
esac
