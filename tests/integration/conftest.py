"""Shared helpers for tests that start a real Triton from the nvidia-pytriton wheel.

Each test module shares ONE server (module-scoped ``triton_server``): the module sets
``TRITON_DEMO_MODELS`` (demo models to write and load) and optionally
``TRITON_EXTRA_MODELS`` (test-only models written by ``write_test_model``) and
``TRITON_EXTRA_ARGS`` (more ``tritonserver`` flags), ``TRITON_SAME_PORTS`` (a restart keeps
the ports) and ``TRITON_TRACE`` (False: no request tracing).

Triton 2.51 can crash or hang with request tracing on (docs/triton.md). A test that fails
carries the server's state and log tail in its report; a server that died is started again
before the module's next test, so one crash is reported once, by the test it hit, and is not
repeated as "connection refused" by every test after it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_support import restart, server_state

from dnnscaler.triton.demo_models import write_repository
from dnnscaler.triton.install import triton_installed
from dnnscaler.triton.launcher import LocalTriton, free_port

# A model whose initialize() fails when max_batch_size exceeds a bound: a reload to a
# larger batch fails inside Triton although the knobs are within the declared limits.
FRAGILE_MODEL_PY = """
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        if int(cfg["max_batch_size"]) > {bound}:
            raise ValueError("this model cannot batch beyond {bound}")

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0")
                                 .as_numpy())]
            )
            for r in requests
        ]
"""

FRAGILE_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: {bound}
dynamic_batching {{ }}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
parameters {{ key: "dnnscaler.max_batch_size" value: {{ string_value: "16" }} }}
parameters {{ key: "dnnscaler.max_instances" value: {{ string_value: "2" }} }}
"""


def write_test_model(repo: Path, name: str = "fragile", bound: int = 4) -> str:
    """Write the fragile test model (loads only with max_batch_size <= ``bound``)."""
    vdir = repo / name / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.py").write_text(FRAGILE_MODEL_PY.format(bound=bound))
    (repo / name / "config.pbtxt").write_text(FRAGILE_CONFIG.format(name=name, bound=bound))
    return name


@pytest.fixture(scope="module")
def triton_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalTriton]:
    if not triton_installed():
        pytest.skip("nvidia-pytriton not installed")
    demo = list(getattr(request.module, "TRITON_DEMO_MODELS", ["echo"]))
    extra = list(getattr(request.module, "TRITON_EXTRA_MODELS", []))
    repo = tmp_path_factory.mktemp("model_repo")
    write_repository(repo, demo)
    for name in extra:
        write_test_model(repo, name)
    # TRITON_SAME_PORTS: ports picked once, so a server killed by the test comes back
    # where its clients (an agent) dial. TRITON_TRACE = False: no request tracing.
    same = bool(getattr(request.module, "TRITON_SAME_PORTS", False))
    server = LocalTriton(
        repo,
        demo + extra,
        grpc_port=free_port() if same else None,
        http_port=free_port() if same else None,
        metrics_port=free_port() if same else None,
        workdir=tmp_path_factory.mktemp("triton"),
        trace=bool(getattr(request.module, "TRITON_TRACE", True)),
        exit_timeout_s=3,
        extra_args=list(getattr(request.module, "TRITON_EXTRA_ARGS", [])),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _triton_server_alive(request: pytest.FixtureRequest) -> None:
    """Before each test that uses the module's server: start it again if it died."""
    if "triton_server" not in request.fixturenames:
        return
    server: LocalTriton = request.getfixturevalue("triton_server")
    if not server.running():
        died = restart(server)
        request.node.user_properties.append(("triton_restarted_before", died))
        print(f"the module's tritonserver had died; started again. It was: {died}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    """A failed test that used a real Triton carries the server's state and log tail."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("triton_server")
    if report.failed and isinstance(server, LocalTriton):
        state = server_state(server)
        report.sections.append(("tritonserver", state))
        report.user_properties.append(("tritonserver", state))
