#!/usr/bin/env bash
# The project's test command (the one the README cites; CI runs it through .ci/run):
#
#   0. scripts/install-test-deps.sh: installs what the tests need on a fresh Debian
#      machine (quick when everything is there; OUTPOST_SKIP_INSTALL=1 skips it).
#   1. `cargo test --features fuzzing --no-fail-fast`: unit tests, session tests and the
#      black-box tests in tests/ (one binary per subsystem folder; the feature adds the
#      fuzz-seed replay, tests/fuzz_seeds.rs). It also builds target/debug/outpost.
#   2. every end-to-end suite tests/e2e/*.py, run as `python3 SUITE BINARY` against
#      that binary with real clients. New suites are picked up automatically. They
#      need python3, swaks (with libnet-ssleay-perl), openssl, testssl.sh, curl...; step 0
#      installs them. A suite that cannot run fails (it never skips silently).
#
# The PostgreSQL store's tests (the store contract on PostgreSQL, the serve-on-PostgreSQL
# test) run when OUTPOST_TEST_POSTGRES names a server; when it is not set and a server
# answers on 127.0.0.1:5432, it is set to postgres://postgres@127.0.0.1:5432/test (trust
# authentication, database `test`), and said so; otherwise the tests say they skipped.
#
# OUTPOST_BIN overrides the binary the e2e suites use. Both stages always run; the
# last line is the total over both, `total: N passed, M failed`, and the exit status
# is non-zero when anything failed (or did not run).
set -euo pipefail
cd "$(dirname "$0")/.."

E2E_DEADLINE=${E2E_DEADLINE:-600} # seconds per e2e suite
bin=${OUTPOST_BIN:-${CARGO_TARGET_DIR:-target}/debug/outpost}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0

if [ "${OUTPOST_SKIP_INSTALL:-0}" != 1 ]; then
    echo "== installing test dependencies (scripts/install-test-deps.sh)"
    bash scripts/install-test-deps.sh
fi

if [ -z "${OUTPOST_TEST_POSTGRES:-}" ] && command -v pg_isready >/dev/null &&
    pg_isready -q -h 127.0.0.1 -p 5432; then
    export OUTPOST_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test
    echo "== PostgreSQL answers on 127.0.0.1:5432: OUTPOST_TEST_POSTGRES=$OUTPOST_TEST_POSTGRES"
elif [ -n "${OUTPOST_TEST_POSTGRES:-}" ]; then
    echo "== PostgreSQL store tests on the server of OUTPOST_TEST_POSTGRES"
else
    echo "== no PostgreSQL on 127.0.0.1:5432 and OUTPOST_TEST_POSTGRES unset: the PostgreSQL store tests will say SKIPPED"
fi

echo "== cargo test"
cargo_status=0
cargo test --features fuzzing --no-fail-fast 2>&1 | tee "$logs/cargo.log" || cargo_status=1

shopt -s nullglob
suites=(tests/e2e/*.py)
for suite in "${suites[@]}"; do
    echo "== $suite"
    timeout --kill-after=10 "$E2E_DEADLINE" python3 "$suite" "$bin" 2>&1 \
        | tee "$logs/e2e.log.tmp" || status=1
    if ! grep -Eq '^[0-9]+ passed, [0-9]+ failed$' "$logs/e2e.log.tmp"; then
        echo "$suite ended without its 'N passed, M failed' line; counted as 1 failed"
        echo "0 passed, 1 failed" >>"$logs/e2e.log.tmp"
        status=1
    fi
    cat "$logs/e2e.log.tmp" >>"$logs/e2e.log"
done

read -r cargo_passed cargo_failed < <(
    sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$logs/cargo.log" |
        awk '{p += $1; f += $2} END {print p + 0, f + 0}'
)
read -r e2e_passed e2e_failed < <(
    sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$logs/e2e.log" 2>/dev/null |
        awk '{p += $1; f += $2} END {print p + 0, f + 0}'
)
if [ "$cargo_status" -ne 0 ]; then
    status=1
    # A build error reports no test at all: count it as a failure.
    if [ "$cargo_failed" -eq 0 ]; then cargo_failed=1; fi
fi
echo "== summary"
echo "cargo test: $cargo_passed passed, $cargo_failed failed"
echo "e2e (${#suites[@]} suite(s)): $e2e_passed passed, $e2e_failed failed"
if [ "$status" -ne 0 ]; then
    echo "FAILED (see above)"
fi
echo "total: $((cargo_passed + e2e_passed)) passed, $((cargo_failed + e2e_failed)) failed"
exit "$status"
