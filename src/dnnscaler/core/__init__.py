"""dnnscaler.core."""
