"""dnnscaler.sim."""
