#!/usr/bin/env bash
# Runs the GPU check on a lent GPU machine (no network): installs the carried wheels, runs
# scripts/gpu_check.py with the given arguments, and copies the report to $OUT when that is set.
#   bash scripts/gpucheck/run_on_device.sh                       # every section (carry .whl)
#   bash scripts/gpucheck/run_on_device.sh --sections spconv     # spconv alone (carry .whl-spconv)
set -uo pipefail
cd "$(dirname "$0")/../.."
site=/tmp/lora3d-site
for dir in .whl .whl-spconv; do
  if compgen -G "$dir/*.whl" >/dev/null; then
    echo "run_on_device: installing $(ls "$dir"/*.whl | wc -l) wheels from $dir into $site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$dir"/*.whl \
      || { echo "run_on_device: installing the wheels of $dir failed (see above)" >&2; exit 2; }
  fi
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
report=${GPU_CHECK_REPORT:-/tmp/gpu-check}
PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out "$report" "$@"
rc=$?
if [ -n "${OUT:-}" ]; then
  cp "$report"/gpu_check.json "$report"/gpu_check.md "$OUT"/ 2>/dev/null
  tar -czf "$OUT"/gpu_check_logs.tar.gz -C "$report" logs 2>/dev/null
fi
exit $rc
