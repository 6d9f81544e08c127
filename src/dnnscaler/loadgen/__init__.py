"""Open- and closed-loop load against Triton over gRPC, with client-side latency windows."""

from dnnscaler.loadgen.generator import LoadGen
from dnnscaler.loadgen.stats import LoadWindow

__all__ = ["LoadGen", "LoadWindow"]
