"""Generated protobuf and gRPC code of proto/segmint/v1 (``make proto``; do not edit)."""
