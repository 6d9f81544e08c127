"""Generated gRPC code for the dnnscaler.v1 protocol (see protos/ and scripts/gen_protos.sh)."""
