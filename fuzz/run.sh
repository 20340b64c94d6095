#!/usr/bin/env bash
# Run every atheris harness in fuzz/ for a bounded time (CI runs this after the test suite).
#
#   fuzz/run.sh                 each harness for $PACSKIT_FUZZ_SECONDS seconds (default 60)
#   fuzz/run.sh fuzz_pdu        only the named harness(es)
#
# Installs the `fuzz` extra (atheris) into .venv first, so it works on a fresh machine after
# `./run test` made the venv. A crash stops that harness: the input that crashed is saved as
# fuzz/artifacts/<harness>-crash-<sha1> and the script exits non-zero once all harnesses ran.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_EACH="${PACSKIT_FUZZ_SECONDS:-60}"
PY="$ROOT/.venv/bin/python"

[ -x "$PY" ] || ./run --help >/dev/null  # ./run creates .venv
if ! "$PY" -c 'import atheris' >/dev/null 2>&1; then
    echo "fuzz: installing atheris (pip install -e .[fuzz]) ..." >&2
    "$PY" -m pip install --disable-pip-version-check -q -e "$ROOT[fuzz]" 2>&1 | grep -v "^WARNING: Location '.*' is ignored" >&2 || true
    "$PY" -c 'import atheris' || { echo "fuzz: atheris is not installable here" >&2; exit 1; }
fi

harnesses=("$@")
[ "${#harnesses[@]}" -gt 0 ] || harnesses=(fuzz_pdu fuzz_header fuzz_identifier)
mkdir -p fuzz/artifacts
failed=()
for name in "${harnesses[@]}"; do
    name="${name%.py}"
    echo "fuzz: $name for ${SECONDS_EACH}s" >&2
    log="fuzz/artifacts/$name.log"
    # A fixed seed and run count make a run repeatable (CI sees what a developer saw); the time still caps it.
    if "$PY" "fuzz/$name.py" -seed="${PACSKIT_FUZZ_SEED:-1}" -runs="${PACSKIT_FUZZ_RUNS:-20000}" \
            -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="fuzz/artifacts/$name-" -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz: $name ok ($(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?') inputs)" >&2
    else
        echo "fuzz: $name FAILED (log: $log)" >&2
        grep -v '^#[0-9]' "$log" | tail -40 >&2
        failed+=("$name")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: findings in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
