"""dnnscaler.triton."""
