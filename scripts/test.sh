#!/usr/bin/env bash
# Run the tests: `.venv/bin/python -m pytest` with this script's arguments, after making sure
# the machine is set up (scripts/setup.sh, idempotent) and the Docker engine runs. The tests
# start their own Redis and Prometheus. SKIP_SETUP=1 skips the two checks.
#
#   scripts/test.sh                      everything (Docker and Prometheus tests included)
#   scripts/test.sh -m "not docker"      a quick run without the engine
#   scripts/test.sh tests/rig -q         one directory
#
# "No tests collected" (pytest's exit code 5) is a failure here: a filter that matches nothing
# must not pass as green.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$root/.venv/bin/python
if [[ ${SKIP_SETUP:-0} != 1 ]]; then
    "$root/scripts/setup.sh" || exit 1
    "$root/scripts/services.sh" start-docker || exit 1
fi
[[ -x $python ]] || {
    echo "test.sh: $python not found: run scripts/setup.sh first" >&2
    exit 1
}

cd "$root" || exit 1
"$python" -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
    echo "test.sh: pytest collected no tests (exit code 5): check the paths and -m/-k filters" >&2
    exit 1
fi
exit "$status"
