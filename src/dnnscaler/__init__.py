"""dnnscaler: throughput maximization of DNN inference under latency SLOs on GPU fleets."""

__version__ = "0.1.0"
