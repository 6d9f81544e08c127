"""Demo models built in code (random weights, fixed seeds) for a local Triton.

Python-backend models whose best static config differs on a 2-core CPU:

- ``wide_mlp`` — batching-heavy (weight streaming dominates; a batch costs ~one input).
- ``serial_io`` — instance-heavy (per-input device wait that does not batch).
- ``resnet_small`` — a small real CNN (CIFAR-style ResNet in torch).
- ``echo`` — no work: measures serving and load-generator overheads (tests use it).

Each config declares the limits the agent must respect, as config ``parameters``:
``dnnscaler.max_batch_size``, ``dnnscaler.max_instances``, ``dnnscaler.max_queue_delay_us``
and ``dnnscaler.instance_memory_mb`` (see ``dnnscaler.triton.model_config``). ``demo.*``
parameters size the network and are read by the model at load time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dnnscaler.core.types import Knobs

DEMO_SRC = Path(__file__).parent / "demo"


@dataclass(frozen=True)
class DemoModel:
    """A demo model: its code, tensor shapes, initial knobs and the limits it declares."""

    name: str
    source: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    max_batch_size: int
    limit_batch_size: int
    limit_instances: int
    instance_memory_mb: float
    approach: str
    instances: int = 1
    queue_delay_us: int = 0
    limit_queue_delay_us: int = 20_000
    demo_params: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def config_pbtxt(self) -> str:
        """The model's ``config.pbtxt`` (protobuf text format)."""
        params = {
            "dnnscaler.max_batch_size": str(self.limit_batch_size),
            "dnnscaler.max_instances": str(self.limit_instances),
            "dnnscaler.max_queue_delay_us": str(self.limit_queue_delay_us),
            "dnnscaler.instance_memory_mb": f"{self.instance_memory_mb:g}",
            "dnnscaler.approach_hint": self.approach,
            **self.demo_params,
        }
        dims_in = ", ".join(str(d) for d in self.input_dims)
        dims_out = ", ".join(str(d) for d in self.output_dims)
        lines = [
            f'name: "{self.name}"',
            'backend: "python"',
            f"max_batch_size: {self.max_batch_size}",
            f"dynamic_batching {{ max_queue_delay_microseconds: {self.queue_delay_us} }}",
            f"instance_group [ {{ count: {self.instances}, kind: KIND_CPU }} ]",
            f'input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {dims_in} ] }} ]',
            f'output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {dims_out} ] }} ]',
        ]
        for key, value in params.items():
            lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
        return "\n".join(lines) + "\n"


DEMO_MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel(
            name="wide_mlp",
            source="wide_mlp.py",
            input_dims=(512,),
            output_dims=(16,),
            max_batch_size=16,
            limit_batch_size=64,
            limit_instances=4,
            instance_memory_mb=100,
            approach="batching",
            demo_params={"demo.hidden": "2048", "demo.layers": "3", "demo.seed": "0"},
            description="3x2048 MLP, weight-streaming bound: batching-heavy",
        ),
        DemoModel(
            name="serial_io",
            source="serial_io.py",
            input_dims=(64,),
            output_dims=(64,),
            max_batch_size=8,
            limit_batch_size=16,
            limit_instances=10,
            instance_memory_mb=40,
            approach="multi-tenancy",
            demo_params={"demo.item_wait_ms": "10", "demo.item_cpu_ms": "0.5", "demo.seed": "1"},
            description="per-input 10 ms device wait + 0.5 ms CPU: instance-heavy",
        ),
        DemoModel(
            name="resnet_small",
            source="resnet_small.py",
            input_dims=(3, 32, 32),
            output_dims=(10,),
            max_batch_size=16,
            limit_batch_size=64,
            limit_instances=4,
            instance_memory_mb=250,
            approach="hybrid",
            demo_params={"demo.width": "16", "demo.blocks": "1", "demo.seed": "2"},
            description="CIFAR-style ResNet (16/32/64 channels) in torch",
        ),
        DemoModel(
            name="echo",
            source="echo.py",
            input_dims=(16,),
            output_dims=(16,),
            max_batch_size=32,
            limit_batch_size=64,
            limit_instances=4,
            instance_memory_mb=40,
            approach="none",
            description="returns its input: serving and client overhead only",
        ),
    )
}


def write_repository(path: str | Path, names: Iterable[str] | None = None) -> list[str]:
    """Write the demo models (all, or ``names``) into a Triton model repository at ``path``.

    Returns the names written. Existing model folders of the same name are replaced.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    chosen = list(DEMO_MODELS) if names is None else list(names)
    unknown = [n for n in chosen if n not in DEMO_MODELS]
    if unknown:
        raise KeyError(f"unknown demo model(s) {unknown}; known: {sorted(DEMO_MODELS)}")
    for name in chosen:
        _write(root, DEMO_MODELS[name])
    return chosen


def write_copy(path: str | Path, model: str, name: str, knobs: Knobs) -> None:
    """Write demo ``model`` into the repository at ``path`` once more, as ``name``, with
    ``knobs`` in its config: a copy to load beside the model, so that two configs can be
    measured in turn without a reload between them (a reload's teardown runs on after
    Triton answers, and took 3-10 s per reload of a side-by-side ladder on 2 cores)."""
    if model not in DEMO_MODELS:
        raise KeyError(f"unknown demo model {model!r}; known: {sorted(DEMO_MODELS)}")
    copy = replace(
        DEMO_MODELS[model],
        name=name,
        max_batch_size=knobs.max_batch_size,
        instances=knobs.instances,
        queue_delay_us=knobs.queue_delay_us,
    )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    _write(root, copy)


def _write(root: Path, model: DemoModel) -> None:
    mdir = root / model.name
    if mdir.exists():
        shutil.rmtree(mdir)
    vdir = mdir / "1"
    vdir.mkdir(parents=True)
    shutil.copyfile(DEMO_SRC / model.source, vdir / "model.py")
    shutil.copyfile(DEMO_SRC / "_common.py", vdir / "demo_common.py")
    (mdir / "config.pbtxt").write_text(model.config_pbtxt())
