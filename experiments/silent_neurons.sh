#!/usr/bin/env bash
# Which hidden neurons never fire (issue 19's "what limits"): `stdbp analyze` on the first 2,000
# test images of each trained network given (run directories or model files), one thread.
# Writes results/beyond/silent-neurons/NAME/{analysis.json,fig5.png} and NAME.txt.
#
#   experiments/silent_neurons.sh results/beyond/fashion-mnist-*-seed0 pretrained/fashion-mnist-*.pt
set -euo pipefail
cd "$(dirname "$0")/.."
out=results/beyond/silent-neurons
mkdir -p "$out"
export NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1
for given in "$@"; do
  if [[ -d $given ]]; then model=$given/model.pt name=$(basename "$given"); else model=$given name=pretrained-$(basename "$given" .pt); fi
  python -m stdbp analyze "$model" --limit 2000 --out "$out/$name" --no-progress > "$out/$name.txt" 2>&1
  find "$out/$name" -name 'spike_times_layer*.png' -delete -o -name 'decision_times.png' -delete
done
