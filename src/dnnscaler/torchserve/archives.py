"""Model archives (.mar) for TorchServe: the demo models, and a model's twin version.

``build_demo_store`` packs each demo model with ``torch-model-archiver``: the same model
code as Triton's (``dnnscaler/triton/demo``), this package's ``handler.py`` around it, and
``dnnscaler_model.json`` (the model's parameters and input shape). Beside each archive it
writes ``NAME.dnnscaler.json``, the knob limits the agent must respect (Triton's demo
configs declare the same limits as config parameters).

TorchServe has no API that changes a model's batch size in place: the backend registers a
second *version* of the model with the new settings, makes it the default and unregisters
the old one. A version is fixed inside the archive's manifest, so ``twin_archive`` writes
a copy whose manifest names the other version (``A`` <-> ``B`` suffixes); the two copies
alternate for as many changes as needed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dnnscaler.triton.demo_models import DEMO_MODELS, DEMO_SRC

HANDLER = Path(__file__).parent / "handler.py"
LIMITS_SUFFIX = ".dnnscaler.json"
MANIFEST = "MAR-INF/MANIFEST.json"
BASE_VERSION = "1.0"
TWIN_SUFFIX = "-b"


class ArchiveError(RuntimeError):
    """An archive could not be built or read; the message names the file and the cause."""


@dataclass(frozen=True)
class DeclaredLimits:
    """What ``NAME.dnnscaler.json`` declares for a model (see ``write_limits``)."""

    max_batch_size: int
    max_instances: int
    max_queue_delay_us: int
    instance_memory_mb: float | None = None
    initial_batch_size: int = 1
    initial_instances: int = 1


def archiver_binary() -> str:
    """``torch-model-archiver`` next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / "torch-model-archiver"
    if local.is_file():
        return str(local)
    found = shutil.which("torch-model-archiver")
    if found is None:
        raise ArchiveError(
            "torch-model-archiver is not installed: pip install 'dnnscaler[torchserve]'"
        )
    return found


def build_demo_store(store: str | Path, names: Iterable[str] | None = None) -> list[str]:
    """Write ``NAME.mar`` and ``NAME.dnnscaler.json`` for the demo models into ``store``."""
    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    chosen = list(DEMO_MODELS) if names is None else list(names)
    unknown = [n for n in chosen if n not in DEMO_MODELS]
    if unknown:
        raise KeyError(f"unknown demo model(s) {unknown}; known: {sorted(DEMO_MODELS)}")
    tool = archiver_binary()
    for name in chosen:
        model = DEMO_MODELS[name]
        with tempfile.TemporaryDirectory(prefix="dnnscaler-mar-") as tmp:
            src = Path(tmp)
            shutil.copyfile(DEMO_SRC / model.source, src / "model.py")
            shutil.copyfile(DEMO_SRC / "_common.py", src / "demo_common.py")
            shutil.copyfile(HANDLER, src / "dnnscaler_handler.py")
            spec = {"input_dims": list(model.input_dims), "parameters": dict(model.demo_params)}
            (src / "dnnscaler_model.json").write_text(json.dumps(spec))
            extra = ",".join(
                str(src / f) for f in ("model.py", "demo_common.py", "dnnscaler_model.json")
            )
            cmd = [
                tool,
                "--model-name", name,
                "--version", BASE_VERSION,
                "--handler", str(src / "dnnscaler_handler.py"),
                "--extra-files", extra,
                "--export-path", str(root),
                "--force",
            ]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise ArchiveError(f"torch-model-archiver failed for {name}: {done.stderr.strip()}")
        write_limits(
            root / f"{name}{LIMITS_SUFFIX}",
            DeclaredLimits(
                max_batch_size=model.limit_batch_size,
                max_instances=model.limit_instances,
                max_queue_delay_us=model.limit_queue_delay_us,
                instance_memory_mb=model.instance_memory_mb,
                initial_batch_size=model.max_batch_size,
                initial_instances=model.instances,
            ),
        )
    return chosen


def write_limits(path: Path, limits: DeclaredLimits) -> None:
    path.write_text(json.dumps(limits.__dict__, indent=2) + "\n")


def read_limits(path: Path) -> DeclaredLimits | None:
    """The limits file's content, or ``None`` when there is none; a bad file raises."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: unreadable limits file: {exc}") from exc
    try:
        return DeclaredLimits(
            max_batch_size=int(raw["max_batch_size"]),
            max_instances=int(raw["max_instances"]),
            max_queue_delay_us=int(raw["max_queue_delay_us"]),
            instance_memory_mb=(
                float(raw["instance_memory_mb"])
                if raw.get("instance_memory_mb") is not None
                else None
            ),
            initial_batch_size=int(raw.get("initial_batch_size", 1)),
            initial_instances=int(raw.get("initial_instances", 1)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"{path}: limits file lacks or mistypes {exc}") from exc


def other_version(version: str) -> str:
    """The twin's version: ``1.0`` <-> ``1.0-b``."""
    if version.endswith(TWIN_SUFFIX):
        return version[: -len(TWIN_SUFFIX)]
    return version + TWIN_SUFFIX


def archive_version(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ArchiveError(f"{path}: not a model archive ({exc})") from exc
    return str(manifest["model"]["modelVersion"])


def twin_archive(store: Path, url: str, version: str) -> str:
    """Write (once) the copy of archive ``url`` whose manifest says ``version``; return
    its store-relative name. The original archive is never modified."""
    source = store / url
    stem = url[: -len(".mar")] if url.endswith(".mar") else url
    base = stem.split(".dnnscaler-v")[0]
    if archive_version(source) == version:
        return url
    twin = f"{base}.dnnscaler-v{version}.mar"
    target = store / twin
    if target.exists() and archive_version(target) == version:
        return twin
    tmp = target.with_suffix(".tmp")
    try:
        with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename == MANIFEST:
                    manifest = json.loads(data)
                    manifest["model"]["modelVersion"] = version
                    data = json.dumps(manifest, indent=2).encode()
                dst.writestr(item, data)
        tmp.replace(target)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(f"could not write {target} from {source}: {exc}") from exc
    return twin
