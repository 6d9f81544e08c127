"""dnnscaler.loadgen."""
