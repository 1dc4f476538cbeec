#!/usr/bin/env bash
# Downloads the wheels the GPU machine lacks, for its Python 3.12 on x86-64, through pip's configured index.
#   bash scripts/gpucheck/fetch_wheels.sh          -> .whl/         (wheels.txt: what the check imports)
#   bash scripts/gpucheck/fetch_wheels.sh spconv   -> .whl-spconv/  (wheels-spconv.txt, LZMA-recompressed)
# Both folders are git-ignored; the device call carries one of them (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-main}" in
  main) list=scripts/gpucheck/wheels.txt; dest=.whl; pack=0 ;;
  spconv) list=scripts/gpucheck/wheels-spconv.txt; dest=.whl-spconv; pack=1 ;;
  *) echo "fetch_wheels: unknown set '$1'. Use: main or spconv." >&2; exit 2 ;;
esac
download=$dest
if [ "$pack" = 1 ]; then download=$(mktemp -d); trap 'rm -rf "$download"' EXIT; fi
mkdir -p "$dest"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$download" -r "$list"
if [ "$pack" = 1 ]; then
  python3 scripts/gpucheck/pack_wheels.py "$download" "$dest"
fi
python3 scripts/gpucheck/pack_wheels.py --size "$dest"
