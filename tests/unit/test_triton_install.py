"""Finding the Triton binary in the wheel, and the environment its stubs need."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from dnnscaler.triton import install
from dnnscaler.triton.install import TritonInstall, TritonNotInstalled, find_triton


def test_missing_wheel_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TritonNotInstalled, match="nvidia-pytriton"):
        find_triton()


def _fake(tmp_path: Path) -> TritonInstall:
    files = {n: tmp_path / n for n in ("tritonserver", "libtriton_python.so", "utils.py", "stub")}
    for f in files.values():
        f.write_text("")
    return TritonInstall(
        binary=files["tritonserver"],
        python_backend_lib=files["libtriton_python.so"],
        python_backend_utils=files["utils.py"],
        python_stub=files["stub"],
        libs_dir=tmp_path,
    )


def test_environment_order(tmp_path: Path) -> None:
    env = _fake(tmp_path).environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    ld = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert ld[0] == sysconfig.get_config_var("LIBDIR")
    assert ld[1:] == [str(tmp_path), "/opt/x"]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["OMP_NUM_THREADS"] == "1"


def test_backend_dir_is_assembled(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    inst = _fake(tmp_path / "src")
    out = inst.assemble_backend_dir(tmp_path / "backends")
    names = sorted(p.name for p in (out / "python").iterdir())
    assert names == ["libtriton_python.so", "stub", "utils.py"]
    inst.assemble_backend_dir(tmp_path / "backends")  # idempotent


def test_real_wheel_is_found_when_installed() -> None:
    try:
        found = find_triton()
    except TritonNotInstalled:
        pytest.skip("nvidia-pytriton not installed")
    assert found.binary.name == "tritonserver"
    assert found.python_stub.exists()
