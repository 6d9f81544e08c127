"""Where the real ``tritonserver`` lives: inside the installed ``nvidia-pytriton`` wheel.

The wheel ships the binary, its shared libraries, the Python backend and one backend stub
per Python version. We locate them without importing ``pytriton`` (slow, and not needed)
so nothing is installed or downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel (or a part of it) is missing from this environment."""


HINT = "install the extra: pip install 'dnnscaler[triton]' (nvidia-pytriton==0.7.0)"


@dataclass(frozen=True)
class TritonInstall:
    """Paths of one Triton installation and the environment its Python stubs need."""

    binary: Path
    python_backend_lib: Path
    python_backend_utils: Path
    python_stub: Path
    libs_dir: Path

    def assemble_backend_dir(self, dest: Path) -> Path:
        """Create ``dest/python/`` holding the backend library, utils and the stub.

        Triton expects one folder per backend; the wheel keeps the stubs elsewhere, so we
        link the three files together. Returns ``dest`` (the ``--backend-directory``).
        """
        py = dest / "python"
        py.mkdir(parents=True, exist_ok=True)
        for src in (self.python_backend_lib, self.python_backend_utils, self.python_stub):
            link = py / src.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(src)
        return dest

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The server's environment: this interpreter's libpython first, the venv's bin first.

        Without the interpreter's LIBDIR first the stub binds the distro libpython and
        multiprocessing breaks; without the venv's ``bin`` on PATH the stub cannot find its
        Python home and the model hangs in LOADING. Math libraries get one thread per
        instance so co-located instances do not fight over the cores.
        """
        env = dict(os.environ if base is None else base)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        ld_parts = [p for p in (libdir, str(self.libs_dir), env.get("LD_LIBRARY_PATH", "")) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_parts)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(var, "1")
        return env


def find_triton() -> TritonInstall:
    """Locate the Triton binary and Python backend in the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(f"nvidia-pytriton is not installed; {HINT}")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    server = pkg / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=server / "bin" / "tritonserver",
        python_backend_lib=server / "backends" / "python" / "libtriton_python.so",
        python_backend_utils=server / "backends" / "python" / "triton_python_backend_utils.py",
        python_stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs_dir=pkg.parent / "nvidia_pytriton.libs",
    )
    for path in (
        install.binary,
        install.python_backend_lib,
        install.python_backend_utils,
        install.python_stub,
        install.libs_dir,
    ):
        if not path.exists():
            raise TritonNotInstalled(f"{path} is missing (Python {version}); {HINT}")
    return install


def triton_installed() -> bool:
    """Whether ``find_triton`` would succeed (for skipping tests and demos)."""
    try:
        find_triton()
    except TritonNotInstalled:
        return False
    return True
