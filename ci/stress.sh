#!/usr/bin/env bash
# Stress mode: run tests again and again, in random order, with every core kept busy, to
# find tests that depend on what ran before them or on the machine being idle. A flaky
# test is a bug; this is how to catch one before CI does.
#
#   ci/stress.sh RUNS [PYTEST ARGS...]      e.g. ci/stress.sh 20 tests/conformance
#                                                ci/stress.sh 5            (the whole suite)
#
# Each run is a fresh pytest session (session fixtures restart, as in CI) with its own
# random order (pytest-randomly; the seed is printed, `--randomly-seed=N`
# replays it). Prints one line per run and a summary; exits 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: ci/stress.sh RUNS [PYTEST ARGS...]}
shift
python=${PYTHON:-.venv/bin/python}
logs=$(mktemp -d)

# the load: one busy loop per core, for as long as the runs last
burners=()
for _ in $(seq "$(nproc)"); do
  "$python" -c 'while True: pass' &
  burners+=($!)
done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT

failed=0
for run in $(seq "$runs"); do
  seed=$RANDOM$RANDOM
  log="$logs/run-$run.log"
  start=$SECONDS
  if "$python" -m pytest -q -p no:cacheprovider --randomly-seed="$seed" "$@" \
      >"$log" 2>&1; then
    verdict=pass
  else
    verdict=FAIL
    failed=$((failed + 1))
  fi
  echo "run $run/$runs: $verdict ($((SECONDS - start)) s, seed $seed) $(tail -n 1 "$log")"
  if [ "$verdict" = FAIL ]; then
    grep -E '^(FAILED|ERROR) ' "$log" | head -n 10
    echo "  full log: $log"
  fi
done
echo "stress: $runs runs, $failed failed, under $(nproc) busy cores: ${*:-the whole suite}"
[ "$failed" -eq 0 ]
