"""dnnscaler.policies."""
