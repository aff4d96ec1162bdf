#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run), in two lanes that run side by side.
#
# Why two lanes: the engine tests keep one vLLM engine at a time, its compute pinned to core 0, so a sequential run
# left about a third of the 2-core machine idle (`time bash .ci/run`: 18 min of user + sys CPU in 24 min). The unit
# lane (`make test-fast`: no engine, no server, nothing slow; ~3.5 min alone; plus the slow tests below) runs beside the engine lane
# at lower priority and on one OpenMP thread, so it takes the idle core without slowing the engine's. The slow tests
# that start no engine and no container (the judge head's retraining, the SmolLM2 conversion, a load-time calibration
# through `serve --check`) run in the unit lane too: it ends ~10 min into a ~24 min engine lane, so they cost nothing
# there, while the engine lane had to run them one after another with its own.
#
#   lane "engine": -m "engine or docker"   (streams to the terminal)
#   lane "units":  -m "not engine and not docker"   (`make test-fast` plus the slow tests without an engine;
#                                                      logged, printed when both are done)
#
# Extra pytest arguments (PYTEST_ARGS, or this script's arguments) mean a hand-picked selection: that runs as one
# plain pytest process instead. Exit status: non-zero when either lane fails or collects no test (pytest's 5).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

fail_on_empty() {  # pytest exits 5 when it collected nothing: a failure here, never a green run
  local rc=$1 lane=$2
  if [[ $rc -eq 5 ]]; then echo "[tests] lane '$lane' collected no tests: failing" >&2; return 1; fi
  return "$rc"
}

if [[ $# -gt 0 ]]; then
  "$PY" -m pytest "$@"
  fail_on_empty $? "selection"
  exit $?
fi

# Both lanes read the converted SmolLM2 (the unit lane's test_models, the engine lane's demo tests): convert it once
# here, so that two lanes never convert it at the same time (the second would replace the folder under the first).
"$PY" -c "from safegene_runtime.models import prepare_smollm2; prepare_smollm2()" || exit 1

log_dir=$(mktemp -d "${TMPDIR:-/tmp}/safegene-tests.XXXXXX")
units_log="$log_dir/units.log"
# What both lanes would build alike (the seeded tiny trained family, tests/_train_tiny.py): built once, by the lane
# that needs it first, under a lock; removed with the logs.
export SAFEGENE_TEST_SHARE="$log_dir/share"
t0=$SECONDS
echo "[tests] lane 'units' runs beside lane 'engine'; its output follows when both are done ($units_log)"
# The units lane: no cache plugin (two pytest processes must not write .pytest_cache at once), no durations table
# (the engine lane's is the one that matters), one OpenMP thread and nice 10 so the engine lane keeps its core.
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 \
  "$PY" -m pytest -m "not engine and not docker" -p no:cacheprovider --durations=10 >"$units_log" 2>&1 &
units_pid=$!
# If this script is interrupted, the units lane goes with it.
trap 'kill "$units_pid" 2>/dev/null' EXIT

"$PY" -m pytest -m "engine or docker"
engine_rc=$?
wait "$units_pid"
units_rc=$?
trap - EXIT

echo
echo "================================ lane 'units' ================================"
cat "$units_log"
echo
fail_on_empty "$engine_rc" engine; engine_rc=$?
fail_on_empty "$units_rc" units; units_rc=$?
echo "[tests] lane 'engine': exit $engine_rc; lane 'units': exit $units_rc; $((SECONDS - t0)) s in all"
rm -rf "$log_dir"
[[ $engine_rc -eq 0 && $units_rc -eq 0 ]]
