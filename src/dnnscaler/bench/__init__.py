"""dnnscaler.bench."""
