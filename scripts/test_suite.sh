#!/usr/bin/env bash
# The suite as `make test` runs it: three pytest runs, split by markers, each with its own
# JUnit file under out/.
#
#   1. `servers`: the tests that start a real server (marked triton or torchserve) or that
#      load the CPUs or read the host's processes (marked serial), one at a time;
#   2. `rest`, at the same time as 1: the control plane over real gRPC and the pure logic;
#   3. `alone`, after both: the convergence test, with nothing beside it (it voids an
#      attempt on CPU used outside it).
#
# 1 and 2 side by side took 445-467 s in fresh clones 58-61 on the 2-core box, against
# 704 s one after the other (fresh clone 57). No test of 2 starts a server or measures the box's speed, and the
# tests of 1 already assert on quantities measured in the same window, as on a slowed box.
# Every run's output is printed, and the exit status is the first failure's (pytest's 5,
# "no test selected", counts only when all three selected none). Extra arguments go to all
# three runs; with a `-m` among them the suite runs as one pytest, in order, with those
# arguments (JUnit: out/test-results.xml).
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
one_at_a_time="triton or torchserve or serial"

"$PYTEST" "${common[@]}" --durations=10 -m "($one_at_a_time) and not alone" \
    --junitxml=out/test-results-servers.xml "$@" >out/test-servers.log 2>&1 &
servers=$!
"$PYTEST" "${common[@]}" --durations=10 -m "not ($one_at_a_time) and not alone" \
    --junitxml=out/test-results-rest.xml "$@" >out/test-rest.log 2>&1 &
rest=$!
wait "$servers"
rc_servers=$?
wait "$rest"
rc_rest=$?
for part in servers rest; do
    echo "=== pytest: $part (out/test-$part.log) ==="
    cat "out/test-$part.log"
done
echo "=== pytest: alone ==="
"$PYTEST" "${common[@]}" --durations=5 -m alone --junitxml=out/test-results-alone.xml "$@"
rc_alone=$?

rc=0
empty=0
for r in "$rc_servers" "$rc_rest" "$rc_alone"; do
    if [ "$r" = 5 ]; then
        empty=$((empty + 1))
    elif [ "$r" != 0 ] && [ "$rc" = 0 ]; then
        rc=$r
    fi
done
if [ "$empty" = 3 ]; then
    rc=5
fi
echo "=== pytest exit codes: servers $rc_servers, rest $rc_rest, alone $rc_alone ==="
exit "$rc"
