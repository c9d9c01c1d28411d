#!/usr/bin/env bash
# Section 2 of the paper, measured: alpha-PSP (SpikeProp) against ReL-PSP (STDBP), same
# architecture, data, initial weights and budget. Writes results/compare-psp/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/compare-psp
stdbp compare-psp --out results/compare-psp --no-progress "$@" 2>&1 | tee results/compare-psp/run.log
