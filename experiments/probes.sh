#!/usr/bin/env bash
# Short probes of recipe options (issue 19): which option speeds up the fit of a network that
# underfits. Each probe trains the paper's CSNN for 3 epochs on the first 20,000 training images
# of Fashion-MNIST, seed 0, one thread; per-epoch metrics and configs in results/beyond/probes/.
# Three epochs do not predict a 40-epoch run's accuracy: a probe only says which options to
# spend long runs on.
#
#   experiments/probes.sh                      # every probe below
#   PROBES="noaug:--jitter 0 --shift 0" experiments/probes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ARCH=${ARCH:-28x28-6C5-P2-16C5-P2-1024-128-10}
DATASET=${DATASET:-fashion-mnist}
DEFAULT_PROBES=("base:" "tau10:--tau 0.1" "tau02:--tau 0.02" "noaug:--jitter 0 --shift 0" "lr2:--lr 0.002"
  "jitter0:--jitter 0" "shift0:--shift 0")
if [[ -n ${PROBES:-} ]]; then IFS=';' read -r -a LIST <<< "$PROBES"; else LIST=("${DEFAULT_PROBES[@]}"); fi
for probe in "${LIST[@]}"; do
  tag=${probe%%:*}
  flags=${probe#*:}
  out=results/beyond/probes/$DATASET-$ARCH-20k-e3-$tag
  # shellcheck disable=SC2086  # flags is a list
  python -m stdbp train --arch "$ARCH" --dataset "$DATASET" --train-limit 20000 --epochs 3 --seed 0 $flags \
    --out "$out" --force --no-progress 2>&1 | tee "$out.log"
done
