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

# 1. torch, from pip's configured index (pip.conf, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS) or,
#    when LORA3D_TORCH_INDEX is set, from that index (torch alone; its dependencies from pip's index).
#    With an NVIDIA driver: first ask pip which torch build it would take, and stop if that build needs a
#    newer CUDA than the driver runs. Without one: the CPU build when pip can find it, because an unpinned
#    torch on Linux pulls several GB of CUDA packages.
TORCH_SPEC="torch>=2.3,<2.14"
pip_torch() {  # pip install "$@", from LORA3D_TORCH_INDEX when it is set
  if [ -n "${LORA3D_TORCH_INDEX:-}" ]; then "${PIP[@]}" --index-url "$LORA3D_TORCH_INDEX" "$@"; else "${PIP[@]}" "$@"; fi
}
install_torch_deps() {  # torch itself is installed (--no-deps): add its dependencies from pip's own index
  # the version from the installed metadata: importing torch needs the very dependencies this installs
  "${PIP[@]}" "torch==$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
}
if ! "$PY" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    say "NVIDIA driver found: checking which torch build pip would install"
    REPORT=$(mktemp)
    if pip_torch --dry-run --ignore-installed --report "$REPORT" "$TORCH_SPEC" >/dev/null 2>&1; then
      DRIVER_CUDA=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1)
      "$PYTHON" scripts/torch_build.py "$REPORT" --driver-cuda "${DRIVER_CUDA:-}" \
        || { rm -f "$REPORT"; die "not installing that torch build (see above)."; }
    else
      say "pip could not report which torch it would install (pip older than 22.2?); installing without the check"
    fi
    rm -f "$REPORT"
    if [ -n "${LORA3D_TORCH_INDEX:-}" ]; then
      pip_torch --no-deps "$TORCH_SPEC" && install_torch_deps \
        || die "could not install torch from LORA3D_TORCH_INDEX=$LORA3D_TORCH_INDEX (see above)."
    else
      "${PIP[@]}" "$TORCH_SPEC" || die "could not install torch from pip's configured index (see above)."
    fi
  elif [ -n "${LORA3D_TORCH_INDEX:-}" ]; then
    say "no NVIDIA driver: installing torch from LORA3D_TORCH_INDEX=$LORA3D_TORCH_INDEX"
    pip_torch --no-deps "$TORCH_SPEC" && install_torch_deps \
      || die "could not install torch from LORA3D_TORCH_INDEX=$LORA3D_TORCH_INDEX (see above)."
  elif "${PIP[@]}" --no-deps "torch==2.13.0+cpu" 2>/dev/null; then
    say "no NVIDIA driver: installed the CPU build of torch that pip's configured sources offer"
    install_torch_deps || die "could not install torch's dependencies (see above)."
  else
    say "no NVIDIA driver, and pip's configured index offers no CPU build of torch: installing its default build"
    [ "$(uname -s)" = Linux ] && say "on Linux that is the CUDA build (several GB); for the CPU build, set" \
      "LORA3D_TORCH_INDEX to a PyTorch CPU wheel index (see README), delete $VENV and rerun"
    "${PIP[@]}" "$TORCH_SPEC" || die "could not install torch from pip's configured index (see above)."
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
