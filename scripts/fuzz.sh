#!/usr/bin/env bash
# Runs every cargo-fuzz target of one crate for N seconds (default 30) on a
# scratch copy of its committed corpus (<crate>/fuzz/corpus/<target>/ stays
# as committed). Exits 0 with a message when nightly Rust or cargo-fuzz is
# missing, so CI can call it anywhere; exits non-zero when a target crashes
# (the input is in <crate>/fuzz/artifacts/<target>/: add it to the corpus
# with a regression test). -max_len 16 KiB reaches every limit the targets
# configure; their decoders check lengths before any allocation.
#
#   scripts/fuzz.sh <crate>/fuzz [seconds] [target ...]
#   CARGO_TARGET_DIR=/somewhere scripts/fuzz.sh hs/fuzz 10 frame_payload
#   FUZZ_SANITIZER=none scripts/fuzz.sh gameserver/fuzz 10
# FUZZ_SANITIZER (default address) is cargo-fuzz's -s: `none` builds about
# twice as fast and runs faster; AddressSanitizer only adds checks to unsafe
# code, which a crate of safe decoders does not reach.
set -euo pipefail

here="$(cd "${1:?usage: $0 <crate>/fuzz [seconds] [target ...]}" && pwd)"
shift
seconds="${1:-30}"
shift || true
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 <crate>/fuzz [seconds] [target ...]" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly); skipping"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz); skipping"
  exit 0
fi

cd "$here"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
target_dir="${CARGO_TARGET_DIR:-$here/target}"
scratch="$target_dir/fuzz-corpus"
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
# Build once, then run the binaries: `cargo fuzz run` would rebuild the
# whole tree whenever a source changed in between.
cargo +nightly fuzz build -s "${FUZZ_SANITIZER:-address}"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "$here/artifacts/$t"
  cp -n "$here/corpus/$t/"* "$scratch/$t/" 2>/dev/null || true
  echo "fuzz: $t for ${seconds}s"
  set +e
  "$target_dir/$triple/release/$t" "$scratch/$t" \
    -artifact_prefix="$here/artifacts/$t/" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$scratch/$t.log" 2>&1
  status=$?
  set -e
  grep -E "^#[0-9]+.*DONE|^stat::number_of_executed_units|^stat::peak_rss_mb|^SUMMARY|Test unit written" "$scratch/$t.log" || true
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under $here/artifacts/)"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
