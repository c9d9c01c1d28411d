#!/usr/bin/env bash
# Table 1, convolutional row (28x28-6C5-P2-16C5-P2-1024-128-10) on MNIST, and the same network
# on Fashion-MNIST (Debian package dataset-fashion-mnist). Logs and metrics in results/conv/.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=28x28-6C5-P2-16C5-P2-1024-128-10
EPOCHS=${EPOCHS:-15}
SEEDS=${SEEDS:-0}
DATASETS=${DATASETS:-"mnist fashion-mnist"}
# EXTRA: more `stdbp train` flags (a recipe); TAG: a suffix naming that recipe in the run directory.
EXTRA=${EXTRA:-}
TAG=${TAG:-}
for dataset in $DATASETS; do
  for seed in $SEEDS; do
    out=results/conv/$dataset-$ARCH${TAG:+-$TAG}-seed$seed
    mkdir -p "$out"
    echo "== $dataset $ARCH seed $seed ${EXTRA:+[$EXTRA] }($(date -u +%FT%TZ), numba threads ${NUMBA_NUM_THREADS:-all})" | tee "$out/train.log"
    /usr/bin/time -v stdbp train --arch "$ARCH" --dataset "$dataset" --epochs "$EPOCHS" --seed "$seed" --out "$out" --force --no-progress $EXTRA \
      2>&1 | tee -a "$out/train.log"
  done
done
