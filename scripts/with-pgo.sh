#!/usr/bin/env bash
# Runs a build command (`cargo build --profile dist ...`, `maturin develop
# --profile dist`) with the committed profile-guided-optimisation profile,
# pgo/segmint.profdata.gz, applied to every crate it compiles. Without the
# file the command runs as given. A function changed since the profile was
# taken compiles without profile data (`make pgo` retakes it): the profile
# steers inlining, branch layout and code placement, never what the code
# computes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
packed="$root/pgo/segmint.profdata.gz"
if [[ -f "$packed" ]]; then
    # rustc reads the profile uncompressed; unpacked once per version of it.
    profile="$root/target/pgo/segmint-$(cksum <"$packed" | cut -d' ' -f1).profdata"
    if [[ ! -f "$profile" ]]; then
        mkdir -p "$root/target/pgo"
        gzip -dc "$packed" >"$profile.tmp"
        mv "$profile.tmp" "$profile"
    fi
    # rustc opens the path from each crate's own directory: it must be
    # absolute. The mismatch warnings would name every function edited
    # since the profile was taken.
    export RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch"
fi
exec "$@"
