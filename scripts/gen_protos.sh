#!/usr/bin/env bash
# Regenerates the committed gRPC code from protos/ with the pinned generator.
# Usage: scripts/gen_protos.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(cd "$(dirname "${1:-.venv/bin/python}")" && pwd)/$(basename "${1:-.venv/bin/python}")"
want="1.81.1"
have="$("$PY" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
if [[ "$have" != "$want" ]]; then
  echo "gen_protos: grpcio-tools $want required, found $have" >&2
  exit 2
fi
rm -f protos/dnnscaler/v1/*_pb2*.py protos/dnnscaler/v1/*_pb2.pyi
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out=protos --grpc_python_out=protos --pyi_out=protos \
  protos/dnnscaler/v1/*.proto
echo "gen_protos: regenerated $(ls protos/dnnscaler/v1/*_pb2*.py | wc -l) modules"
