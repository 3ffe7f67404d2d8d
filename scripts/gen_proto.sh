#!/usr/bin/env bash
# Generates the Python code of proto/segmint/v1/*.proto into
# python/segmint/proto/ (or into $1, used by `make proto-check`).
# Reproducible: the generator is the pinned grpcio-tools of requirements-dev.txt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
out="${1:-$root/python/segmint/proto}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m grpc_tools.protoc -I "$root/proto" \
    --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
    "$root/proto/segmint/v1/segmint.proto"
mkdir -p "$out"
for f in segmint_pb2.py segmint_pb2.pyi segmint_pb2_grpc.py; do
    # The generated grpc module imports `segmint.v1`; the package here is segmint.proto.
    sed -e 's/^from segmint\.v1 import /from segmint.proto import /' "$tmp/segmint/v1/$f" >"$out/$f"
done
cat >"$out/__init__.py" <<'PY'
"""Generated protobuf and gRPC code of proto/segmint/v1 (``make proto``; do not edit)."""
PY
