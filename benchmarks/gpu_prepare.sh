#!/usr/bin/env bash
# Prepare, on this machine (it has the network and ../shared/data), what benchmarks/gpu_checks.py needs on the
# device machine, which has neither: Python wheels in .whl/ (gsplat, torchpq for its PngCompression, and
# scenezip's dependencies missing from the device image), and in .gpu/ the bird capture, a small c3dgs file of it
# and image .scz files at Kodak's full resolution. Both folders are ignored by git (.git/info/exclude) and
# travel with `carry`. About 7 minutes on 2 CPU cores (the c3dgs run and three image encodes); reruns keep
# what exists. See the docstring of benchmarks/gpu_checks.py for the device call.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${SCENEZIP_DATA:-../shared/data}
EXCLUDE=$(git rev-parse --git-path info/exclude)  # also right in a worktree, where .git is a file
mkdir -p "$(dirname "$EXCLUDE")"
for d in /.whl/ /.gpu/; do grep -qxF "$d" "$EXCLUDE" 2>/dev/null || echo "$d" >> "$EXCLUDE"; done
mkdir -p .whl .gpu/images

# Wheels for the device's Python 3.12 (versions pinned: two versions of one package stop the install there).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl gsplat==1.5.3 torchpq==0.3.0.6 tyro==1.0.17 docstring-parser==0.18.0 shtab==1.13.0 \
  typeguard==4.6.1 constriction==0.5.0 plyfile==1.1.5

[ -d .gpu/bird ] || cp -r "$DATA/bird" .gpu/bird

# A c3dgs file of bird for the torch/CUDA render parity (quality does not matter there; a short run).
if [ ! -f .gpu/bird_c3dgs.scz ]; then
  OMP_NUM_THREADS=2 scenezip train .gpu/bird --method c3dgs --out /tmp/gpu_prepare_bird --downscale 8 \
    --steps 500 --densify.max-gaussians 8000 --distill.steps 300 --backend torch --no-progress
  cp /tmp/gpu_prepare_bird/scene.scz .gpu/bird_c3dgs.scz
fi

# Full-resolution Kodak image files at 0.5, 1 and 2 bpp for the decode timing (short fits: the time depends
# on the Gaussian count and sizes, not on how well they were fitted).
for spec in "kodim01 0.5" "kodim05 1.0" "kodim07 2.0"; do
  set -- $spec
  f=".gpu/images/$1_$2.scz"
  [ -f "$f" ] || OMP_NUM_THREADS=2 scenezip image encode "$DATA/kodak/$1.png" -o "$f" --bpp "$2" --steps 150 --no-search --quiet
done
du -sh .whl .gpu
