#!/usr/bin/env bash
# Runs built fuzz targets one after another (tests/fuzz/README.md); called by `make fuzz` and
# `make fuzz-smoke`.
#
#   run.sh [--replay] SECONDS TARGET...
#
# --replay first runs every seed (tests/fuzz/corpus/<t>/) and regression input
# (tests/fuzz/regressions/<t>/) once, as a plain test. Then each target fuzzes for SECONDS in a
# scratch corpus, build-fuzz/corpus/<t>, seeded from both: generated inputs never land in the
# tree. Every target runs even when an earlier one failed; the exit status is 1 if any crashed,
# leaked, timed out or broke an invariant. Crash inputs go to build-fuzz/artifacts/<t>/.
set -uo pipefail
cd "$(dirname "$0")/../.."

FUZZ=tests/fuzz
OUT=build-fuzz
replay=0
if [ "${1:-}" = --replay ]; then
    replay=1
    shift
fi
seconds=${1:?usage: run.sh [--replay] SECONDS TARGET...}
shift

# Stacks for UBSan reports too (ASan prints them anyway); the caller's settings win.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# Options every run shares: a hang is a failure after 10 s, memory is capped below what the
# machine has, and a crash stops the run at once.
common=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024)

# Per-target options: the longest input worth trying.
max_len() {
    case $1 in
    config | sampling_rules) echo 16384 ;;
    h1_parse) echo 8192 ;;
    h1_server | h1_client | h2_client) echo 4096 ;;
    dns_parse) echo 4096 ;;
    *) echo 1024 ;;
    esac
}

# The lines of a log that say what went wrong: sanitizer and libFuzzer reports, a target's own
# "invariant broken" and what it printed before it.
report='^(Running:|==[0-9]+== *ERROR|SUMMARY|whole: |split at|byte by)|runtime error|invariant broken'

inputs() { # the files in the tree for target $1, seeds then regressions
    find "$FUZZ/corpus/$1" "$FUZZ/regressions/$1" -type f 2>/dev/null | sort
}

failed=()
summary=()
for t in "$@"; do
    bin=$OUT/fuzz_$t
    log=$OUT/logs/$t.log
    mkdir -p "$OUT/logs" "$OUT/artifacts/$t" "$OUT/corpus/$t"
    dict=()
    [ -f "$FUZZ/$t.dict" ] && dict=(-dict="$FUZZ/$t.dict")

    if [ $replay = 1 ]; then
        mapfile -t files < <(inputs "$t")
        if [ ${#files[@]} -gt 0 ]; then
            if ! "$bin" "${common[@]}" "${files[@]}" >"$OUT/logs/$t.replay.log" 2>&1; then
                echo "== $t: an input in the tree fails (log: $OUT/logs/$t.replay.log)"
                grep -E "$report" "$OUT/logs/$t.replay.log" | tail -n 20
                failed+=("$t (replay)")
                continue
            fi
            echo "== $t: ${#files[@]} seed and regression inputs pass"
        fi
    fi

    inputs "$t" | xargs -r cp -t "$OUT/corpus/$t"
    echo "== $t: fuzzing for ${seconds}s (log: $log)"
    "$bin" "${common[@]}" "${dict[@]}" -max_len="$(max_len "$t")" -max_total_time="$seconds" \
        -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" "$OUT/corpus/$t" >"$log" 2>&1
    rc=$?
    # The last status line: "#N DONE cov: C ft: F corp: K/S ... exec/s: E ...".
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    summary+=("$t: ${last:-no status line}")
    if [ $rc -ne 0 ]; then
        echo "== $t: FAILED (exit $rc); the input is in $OUT/artifacts/$t/"
        grep -E -A 40 "$report" "$log" | head -n 60
        failed+=("$t")
    fi
done

echo "== fuzz summary"
printf '   %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "== fuzz: failed: ${failed[*]}"
    exit 1
fi
echo "== fuzz: ok"
