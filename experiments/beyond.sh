#!/usr/bin/env bash
# Beyond the paper (issue 19): wider convolutional networks, 40 epochs, random rotations of up to
# 10 degrees and zooms of up to 10 %, one thread per run. Logs, metrics and configs in
# results/beyond/; a run that was stopped (SIGTERM saves a checkpoint) continues where it was.
#
#   ARCH=28x28-16C5-P2-32C5-P2-800-10 DATASET=mnist SEEDS="1 2" experiments/beyond.sh
#   EXTRA="" TAG="" ...   (the defaults of stdbp train: no rotations or zooms)
#
# The table: python experiments/summarize.py results/beyond (add --frontier for every run).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-28x28-16C5-P2-32C5-P2-800-10}
DATASET=${DATASET:-mnist}
EPOCHS=${EPOCHS:-40}
SEEDS=${SEEDS:-0}
EXTRA=${EXTRA---rotate 10 --scale 0.1}
TAG=${TAG-affine}
export NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for seed in $SEEDS; do
  out=results/beyond/$DATASET-$ARCH-e$EPOCHS${TAG:+-$TAG}-seed$seed
  if [[ -f $out/checkpoint.pt ]]; then
    echo "== continued (--resume) $out ($(date -u +%FT%TZ), numba threads $NUMBA_NUM_THREADS)" | tee -a "$out/train.log"
    python -m stdbp train --resume "$out" --no-progress 2>&1 | tee -a "$out/train.log"
  else
    mkdir -p "$out"
    echo "== $DATASET $ARCH seed $seed [$EXTRA] ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), numba threads $NUMBA_NUM_THREADS)" \
      | tee "$out/train.log"
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    python -m stdbp train --arch "$ARCH" --dataset "$DATASET" --epochs "$EPOCHS" --seed "$seed" $EXTRA \
      --checkpoint-every 100 --out "$out" --force --no-progress 2>&1 | tee -a "$out/train.log"
  fi
done
