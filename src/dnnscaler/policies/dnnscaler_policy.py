"""``dnnscaler``: our default policy. First version delegates to the paper's batching scaler;
the model-based controller replaces it."""

from __future__ import annotations

from dataclasses import dataclass

from dnnscaler.policies.paper import PaperPolicy


@dataclass(frozen=True)
class DnnScalerPolicy(PaperPolicy):
    name: str = "dnnscaler"
