#!/usr/bin/env bash
# Fails when the committed generated gRPC code differs from a fresh generation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(cd "$(dirname "${1:-.venv/bin/python}")" && pwd)/$(basename "${1:-.venv/bin/python}")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/protos"
cp -r protos/dnnscaler "$tmp/protos/"
cp -r scripts "$tmp/"
(cd "$tmp" && scripts/gen_protos.sh "$PY" >/dev/null)
if ! diff -r -x __pycache__ protos/dnnscaler "$tmp/protos/dnnscaler"; then
  echo "protos-check: generated code is stale; run 'make protos' and commit" >&2
  exit 1
fi
echo "protos-check: generated code matches protos/"
