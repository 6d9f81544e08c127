"""Real TorchServe: demo model archives, a local launcher, and its access-log latency source.

Needs the optional extra ``dnnscaler[torchserve]`` and Java 17; a Triton-only agent
imports nothing from here.
"""
