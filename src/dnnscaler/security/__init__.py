"""Transport security of the control plane: identities in certificates, gRPC credentials,
admin tokens and the development CA (``dnnscaler certs``)."""
