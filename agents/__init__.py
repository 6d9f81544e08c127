"""Per-GPU agent: reconciles a local inference server with the controller's knobs."""
