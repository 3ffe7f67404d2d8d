#!/usr/bin/env bash
# `make pgo`: retakes pgo/segmint.profdata.gz, the profile that `make build`
# and the benchmarks compile with (scripts/with-pgo.sh), and records the
# rustc that took it in pgo/rustc-version. Builds segmint-bench and the
# extension instrumented, runs the training workload through both
# (scripts/pgo_train.py: the standard generator, another seed), merges the
# counts, then rebuilds the extension with the new profile.
#
# Needs llvm-profdata of LLVM 19 or later (rustc's own LLVM may be newer:
# llvm-profdata reads the raw files of later LLVMs in the same format
# version): rustup's llvm-tools component, or Debian's llvm-19 package.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
maturin="${MATURIN:-$(dirname "$py")/maturin}"

llvm_major() { "$1" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -n1; }
profdata=""
rustc="${RUSTC:-rustc}"
sysroot_tool="$("$rustc" --print sysroot)/lib/rustlib/$("$rustc" -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
for candidate in "$sysroot_tool" llvm-profdata-{30..19} llvm-profdata; do
    if command -v "$candidate" >/dev/null 2>&1 && [[ "$(llvm_major "$candidate")" -ge 19 ]] 2>/dev/null; then
        profdata="$candidate"
        break
    fi
done
if [[ -z "$profdata" ]]; then
    echo "make pgo: no llvm-profdata of LLVM 19 or later (rustup component add llvm-tools, or apt install llvm-19)" >&2
    exit 1
fi

work="$(mktemp -d)"
instrumented=0
replaced=0
finish() {
    status=$?
    if ((status != 0 && replaced)); then
        rm -f "$root/pgo/segmint.profdata.gz" "$root/pgo/rustc-version"
        cp "$work/old/"* "$root/pgo/" 2>/dev/null || true
    fi
    if ((status != 0 && instrumented)); then
        echo "make pgo failed: reinstalling the extension built with the committed profile" >&2
        "$root/scripts/with-pgo.sh" "$maturin" develop --profile dist -q ||
            echo "make pgo: that failed too: run make build" >&2
    fi
    rm -rf "$work"
}
trap finish EXIT
# A signal runs the EXIT trap with $? at 0: exit with its status instead.
trap 'exit 130' INT
trap 'exit 143' TERM

raw="$work/raw"
gen_target="$root/target/pgo-generate"
generate() { SEGMINT_PGO_GENERATE="$raw" "$root/scripts/with-pgo.sh" "$@"; }
generate cargo build --profile dist -q -p segmint-bench --target-dir "$gen_target"
instrumented=1
generate "$maturin" develop --profile dist -q --target-dir "$gen_target"
# The instrumented build scripts of the dependencies ran during the build.
rm -rf "$raw"

"$py" scripts/pgo_train.py export "$work/workload"
bench="$gen_target/dist/segmint-bench"
events="$work/workload/events-200000-600000-180-7.ndjson"
"$bench" "$events" "$work/workload/audiences-1000-None-7.json" \
    --threads 1 --latency-samples 2000 --backfills 2 >/dev/null
"$bench" "$events" "$work/workload/audiences-1000-None-7.json" \
    --threads 2 --latency-samples 0 --backfills 1 --max-events 200000 \
    --data-dir "$work/data" --fsync never >/dev/null
"$bench" "$events" "$work/workload/audiences-10000-None-7.json" \
    --threads 1 --latency-samples 500 --backfills 1 --max-events 150000 >/dev/null
"$py" scripts/pgo_train.py python

# One file per instrumented binary: segmint-bench's and the extension's.
runs=("$raw"/*.profraw)
if [[ ! -f "${runs[0]}" ]] || ((${#runs[@]} < 2)); then
    echo "make pgo: expected the counts of 2 binaries, found ${#runs[@]} files in $raw" >&2
    exit 1
fi
# Sparse: functions the training never ran keep no entry (a quarter of the
# size, and no slower in paired runs); gzip -n: the same bytes for the same counts.
"$profdata" merge --sparse -o "$work/segmint.profdata" "${runs[@]}"
gzip -9nc "$work/segmint.profdata" >"$work/segmint.profdata.gz"
"$rustc" -V >"$work/rustc-version"
# Into pgo/ only now; put back if the rebuild with it fails.
mkdir -p "$work/old" "$root/pgo"
for f in segmint.profdata.gz rustc-version; do
    if [[ -f "$root/pgo/$f" ]]; then cp "$root/pgo/$f" "$work/old/"; fi
done
replaced=1
cp "$work/segmint.profdata.gz" "$work/rustc-version" "$root/pgo/"
"$root/scripts/with-pgo.sh" "$maturin" develop --profile dist -q
instrumented=0
replaced=0
echo "wrote pgo/segmint.profdata.gz ($(du -h "$root/pgo/segmint.profdata.gz" | cut -f1)) with $profdata for $(cat "$root/pgo/rustc-version")"
