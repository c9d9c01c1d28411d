#!/usr/bin/env bash
# Table 1, fully connected rows: 784-400-10 and 784-800-10 on MNIST, three seeds each.
# Writes results/table1/<run>/{config.json,metrics.jsonl,train.log,model.pt}; the README's
# table is made from these files by experiments/summarize.py.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-20}
SEEDS=${SEEDS:-"0 1 2"}
ARCHS=${ARCHS:-"784-800-10 784-400-10"}
for arch in $ARCHS; do
  for seed in $SEEDS; do
    out=results/table1/mnist-$arch-seed$seed
    mkdir -p "$out"
    echo "== $arch seed $seed ($(date -u +%FT%TZ), numba threads ${NUMBA_NUM_THREADS:-all})" | tee "$out/train.log"
    /usr/bin/time -v stdbp train --arch "$arch" --epochs "$EPOCHS" --seed "$seed" --out "$out" --force --no-progress \
      2>&1 | tee -a "$out/train.log"
  done
done
