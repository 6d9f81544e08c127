"""A reload has finished only when the old instances have exited: the stub count read from
``/proc`` (a fake tree here), and the harness's wait on it."""

from __future__ import annotations

from pathlib import Path

from dnnscaler.bench.triton_adapter import TritonServer
from dnnscaler.core.types import Knobs
from dnnscaler.triton.launcher import STUB_NAME, python_stub_count

STUB = f"/w/backends/python/{STUB_NAME}"


def _proc(root: Path, pid: int, ppid: int, argv: list[str], comm: str = "x") -> None:
    d = root / str(pid)
    d.mkdir()
    # The command name may hold spaces and parentheses: fields are read after the last ")".
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} 0 0\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_counts_the_stub_processes_of_one_model_under_its_server(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 1, ["/usr/bin/tritonserver", "--model-repository", "/r"])
    for pid in (11, 12, 13):  # resnet_small: two new instances and one old still exiting
        _proc(tmp_path, pid, 10, [STUB, "/r/resnet_small/1/model.py", "shm", "1048576"])
    _proc(tmp_path, 14, 10, [STUB, "/r/echo/1/model.py", "shm"])
    _proc(tmp_path, 15, 99, [STUB, "/r/resnet_small/1/model.py", "shm"])  # another server's
    _proc(tmp_path, 16, 10, ["/bin/sh", "/r/resnet_small/1/model.py"], comm="a (b) c")
    (tmp_path / "self").mkdir()  # not a process
    (tmp_path / "17").mkdir()  # exited while read: no stat
    assert python_stub_count(10, "resnet_small", tmp_path) == 3
    assert python_stub_count(10, "echo", tmp_path) == 1
    assert python_stub_count(10, "wide_mlp", tmp_path) == 0
    assert python_stub_count(10, "resnet_small", tmp_path / "missing") is None


class _Lingering:
    """A LocalTriton whose old instances exit after ``polls`` checks."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.asked: list[tuple[str, int]] = []

    def old_instances_running(self, model: str, instances: int) -> bool:
        self.asked.append((model, instances))
        return len(self.asked) <= self.polls


async def test_the_harness_waits_for_old_instances_and_gives_up_at_its_bound() -> None:
    triton = _Lingering(polls=3)
    server = TritonServer("url", None, None, triton)  # type: ignore[arg-type]
    waited = await server.wait_settled("resnet_small", Knobs(8, 2, 0))
    assert triton.asked == [("resnet_small", 2)] * 4
    assert 0.25 <= waited < 5.0
    stuck = TritonServer("url", None, None, _Lingering(polls=10**6))  # type: ignore[arg-type]
    assert await stuck.wait_settled("m", Knobs(8, 1, 0), timeout_s=0.3) >= 0.3
    remote = TritonServer("url", None, None, None)  # type: ignore[arg-type]
    assert await remote.wait_settled("m", Knobs(8, 1, 0)) == 0.0
