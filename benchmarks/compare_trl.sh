#!/usr/bin/env bash
# `rto bench --compare trl` in a throwaway virtual environment: trl is not an rto dependency, so it is
# installed (without dependencies: torch, transformers, accelerate and datasets come from the system
# site-packages rto already uses) into a venv outside the repository. TRL's PPO trainer lives in
# trl.experimental.ppo up to trl 1.12.0.
#
#   bash benchmarks/compare_trl.sh                 # tiny model, results in benchmarks/results/bench_trl_tiny.json
#   SIZE=medium ITERATIONS=3 THREADS=1 bash benchmarks/compare_trl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRL_VENV:-/tmp/rto-trl-venv}"
SIZE="${SIZE:-tiny}"
ITERATIONS="${ITERATIONS:-5}"
THREADS="${THREADS:-2}"
SUFFIX=""
[ "$THREADS" = "2" ] || SUFFIX="_t${THREADS}"
if [ ! -x "$VENV/bin/python" ]; then
  python -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c "import trl.experimental.ppo" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --no-deps "trl==1.12.0"
fi
mkdir -p benchmarks/results
TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" -m rto.bench --model-size "$SIZE" --iterations "$ITERATIONS" \
  --threads "$THREADS" --compare trl --json-out "benchmarks/results/bench_trl_${SIZE}${SUFFIX}.json"
