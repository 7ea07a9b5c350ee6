#!/usr/bin/env bash
# Builds the fuzz targets once and runs each for a bounded time (CI's fuzz phase; also the way to
# run them longer by hand). Prints executions and coverage per target from libFuzzer's final
# stats; a crash, panic, timeout or out-of-memory fails the run and names the saved input.
# usage: fuzz/run.sh [-t SECONDS] [TARGET...]   (default: 60 s each, every target)
# Environment: FUZZ_PARALLEL=N runs N targets at a time (default: one per CPU); FUZZ_JOBS=N runs
# N workers per target (libFuzzer -fork=N; default 1).
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz"

secs=60
if [ "${1:-}" = -t ]; then secs=$2; shift 2; fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(omaha_request omaha_response payload_prefix payload_delta agent_config fleetlock_body
           admin_json version_order crau_header)
fi

# Stable Rust: no sanitizer (-Zsanitizer is nightly-only); debug assertions and overflow checks
# on; 16 codegen units build about twice as fast on 2 cores for a little speed at run time.
build_flags=(-s none -O -a --codegen-units 16)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
build_start=$(date +%s)
# One target: build only it; otherwise all of them (cargo fuzz build takes at most one name).
one=()
if [ ${#targets[@]} -eq 1 ]; then one=("${targets[0]}"); fi
cargo fuzz build "${build_flags[@]}" "${one[@]}"
echo "fuzz build: $(( $(date +%s) - build_start ))s"
"$fuzz/seed.sh"

bin=$fuzz/target/x86_64-unknown-linux-gnu/release
logs=$fuzz/target/logs
mkdir -p "$logs"

# run_one TARGET: runs it, writes its summary line to $logs/TARGET.line and, if it failed, the
# report to $logs/TARGET.failed.
run_one() {
  local t=$1 log=$logs/$1.log start rc took last execs cov ft corp rate artifact
  rm -f "$logs/$t.line" "$logs/$t.failed"
  mkdir -p "$fuzz/artifacts/$t" "$fuzz/corpus/$t"
  local args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$fuzz/artifacts/$t/")
  if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then args+=(-fork="$FUZZ_JOBS"); fi
  start=$(date +%s)
  rc=0
  "$bin/$t" "${args[@]}" "$fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  took=$(( $(date +%s) - start ))
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  rate=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
  printf '%-16s execs %9s  exec/s %6s  cov %5s  ft %6s  corpus %5s  %3ss\n' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$took" >"$logs/$t.line"
  if [ $rc -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | tail -1)
    {
      printf '\n!!! fuzz target %s FAILED (exit %s); input saved as: %s\n' "$t" "$rc" "${artifact:-none}"
      grep -v '^#[0-9]' "$log" | tail -40
      printf '\nreproduce: %s/%s %s\n' "$bin" "$t" "${artifact:-ARTIFACT}"
    } >"$logs/$t.failed"
  fi
}

# One target per core at a time (each libFuzzer process is single-threaded).
parallel=${FUZZ_PARALLEL:-$(nproc)}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ $running -ge "$parallel" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=()
printf '\nfuzz summary (%ss per target, %s at a time):\n' "$secs" "$parallel"
for t in "${targets[@]}"; do
  printf '  %s' "$(cat "$logs/$t.line" 2>/dev/null || echo "$t: no result")"
  echo
  if [ -e "$logs/$t.failed" ]; then failed+=("$t"); fi
done
for t in "${failed[@]}"; do cat "$logs/$t.failed"; done
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nFUZZING FOUND CRASHES in: %s (inputs in fuzz/artifacts/; docs/development/testing.md, "Fuzzing")\n' "${failed[*]}"
  exit 1
fi
