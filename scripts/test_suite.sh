#!/usr/bin/env bash
# The suite as `make test` runs it: four pytest runs, split by markers, each with its own
# JUnit file under out/.
#
#   1. `triton`: the tests that start a real Triton (marked triton), one at a time;
#   2. `torchserve`, at the same time as 1: the tests that start a real TorchServe (marked
#      torchserve) or that load the CPUs or read the host's processes (marked serial), one
#      at a time;
#   3. `rest`, at the same time as 1 and 2: the control plane over real gRPC and the pure
#      logic;
#   4. `alone`, after all three: the convergence test, with nothing beside it (it voids an
#      attempt on CPU used outside it).
#
# 1 and 3 side by side took 445-467 s in fresh clones 58-61 on the 2-core box, against
# 704 s one after the other (fresh clone 57). The real-server tests wait more than they
# compute: with 1 and 2 in one run (until 12-08) the box was 20-60 % busy over that part
# (fresh clone 96, /proc/stat per minute), and the part took 504-533 s. No test of 3
# starts a server or measures the box's speed; the tests of 1 and 2 assert on quantities
# measured in the same window, as on a slowed box, start their servers on ports of their
# own and look for their processes by their own folders. Every run's output is printed,
# and the exit status is the first failure's (pytest's 5, "no test selected", counts only
# when all four selected none). Extra arguments go to all four runs; with a `-m` among
# them the suite runs as one pytest, in order, with those arguments (JUnit:
# out/test-results.xml).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
mkdir -p out
common=(-q -rxX -p no:cacheprovider)
for arg in "$@"; do
    case "$arg" in
    -m | -m*) exec "$PYTEST" "${common[@]}" --durations=15 --junitxml=out/test-results.xml "$@" ;;
    esac
done
# name, then marker expression: run side by side.
parts=(
    triton "triton and not alone"
    torchserve "(torchserve or serial) and not triton and not alone"
    rest "not (triton or torchserve or serial) and not alone"
)
pids=()
names=()
for ((i = 0; i < ${#parts[@]}; i += 2)); do
    part=${parts[i]}
    "$PYTEST" "${common[@]}" --durations=10 -m "${parts[i + 1]}" \
        --junitxml="out/test-results-$part.xml" "$@" >"out/test-$part.log" 2>&1 &
    pids+=($!)
    names+=("$part")
done
codes=()
for pid in "${pids[@]}"; do
    wait "$pid"
    codes+=($?)
done
for part in "${names[@]}"; do
    echo "=== pytest: $part (out/test-$part.log) ==="
    cat "out/test-$part.log"
done
echo "=== pytest: alone ==="
"$PYTEST" "${common[@]}" --durations=5 -m alone --junitxml=out/test-results-alone.xml "$@"
codes+=($?)
names+=(alone)

rc=0
empty=0
line=""
for i in "${!codes[@]}"; do
    r=${codes[i]}
    line+="${names[i]} $r, "
    if [ "$r" = 5 ]; then
        empty=$((empty + 1))
    elif [ "$r" != 0 ] && [ "$rc" = 0 ]; then
        rc=$r
    fi
done
if [ "$empty" = "${#codes[@]}" ]; then
    rc=5
fi
echo "=== pytest exit codes: ${line%, } ==="
exit "$rc"
