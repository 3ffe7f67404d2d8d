#!/usr/bin/env bash
# Runs a build command (`cargo build --profile dist ...`, `maturin develop
# --profile dist`) with the committed profile-guided-optimisation profile,
# pgo/segmint.profdata.gz, applied to every crate it compiles.
#
# The profile matches functions by symbol name, and rustc puts its own
# version into every symbol's hash: it applies only with the rustc that took
# it (pgo/rustc-version). With another rustc, or without the file, the
# command runs as given and says so. A function changed since the profile
# was taken compiles without profile data (`make pgo` retakes it): the
# profile steers inlining, branch layout and code placement, never what the
# code computes.
#
# The flags go in CARGO_ENCODED_RUSTFLAGS (the path may hold spaces), after
# those of CARGO_ENCODED_RUSTFLAGS or RUSTFLAGS if the caller set them; like
# any of these variables, they take the place of `rustflags` from Cargo
# config files.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
packed="$root/pgo/segmint.profdata.gz"

# The flags for the command: the caller's (CARGO_ENCODED_RUSTFLAGS wins over
# RUSTFLAGS, as in Cargo, even when empty) followed by "$@".
export_flags() {
    local given=() all
    if [[ -v CARGO_ENCODED_RUSTFLAGS ]]; then
        IFS=$'\x1f' read -r -a given <<<"$CARGO_ENCODED_RUSTFLAGS" || true
    else
        read -r -a given <<<"${RUSTFLAGS:-}" || true
    fi
    all=("${given[@]}" "$@")
    CARGO_ENCODED_RUSTFLAGS="$(IFS=$'\x1f'; printf '%s' "${all[*]}")"
    export CARGO_ENCODED_RUSTFLAGS
    unset RUSTFLAGS
}

# `make pgo` builds its instrumented binaries through here too, so that the
# training and the use see the same flags.
if [[ -n "${SEGMINT_PGO_GENERATE:-}" ]]; then
    export_flags "-Cprofile-generate=$SEGMINT_PGO_GENERATE"
    exec "$@"
fi

taken_with="$(cat "$root/pgo/rustc-version" 2>/dev/null || true)"
building_with="$("${RUSTC:-rustc}" -V)"
if [[ ! -f "$packed" ]]; then
    echo "with-pgo: no $packed: building without a PGO profile" >&2
elif [[ "$taken_with" != "$building_with" ]]; then
    echo "with-pgo: the PGO profile was taken with '$taken_with', this is" \
        "'$building_with': building without it (make pgo retakes it)" >&2
else
    # rustc reads the profile uncompressed: unpacked once per version of it,
    # named by its hash so that a new profile rebuilds every crate (Cargo
    # does not watch the file, only the flags). The path must be absolute:
    # rustc opens it from each crate's own directory.
    dir="${CARGO_TARGET_DIR:-$root/target}/pgo"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    profile="$dir/segmint-$(sha256sum "$packed" | cut -c1-16).profdata"
    if [[ ! -f "$profile" ]]; then
        # Builds started together each unpack into their own file.
        tmp="$(mktemp "$dir/.unpack.XXXXXX")"
        trap 'rm -f "$tmp"' EXIT
        gzip -dc "$packed" >"$tmp"
        mv -f "$tmp" "$profile"
        trap - EXIT
        find "$dir" -name 'segmint-*.profdata' ! -name "${profile##*/}" -delete
    fi
    # The mismatch warnings would name every function edited since the
    # profile was taken.
    export_flags "-Cprofile-use=$profile" "-Cllvm-args=-no-pgo-warn-mismatch"
fi
exec "$@"
