"""A local Triton Inference Server from the nvidia-pytriton wheel, and demo models for it."""

from dnnscaler.triton.demo_models import DEMO_MODELS, write_repository
from dnnscaler.triton.install import TritonNotInstalled, find_triton
from dnnscaler.triton.launcher import LocalTriton, TritonStartError

__all__ = [
    "DEMO_MODELS",
    "LocalTriton",
    "TritonNotInstalled",
    "TritonStartError",
    "find_triton",
    "write_repository",
]
