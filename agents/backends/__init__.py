"""Inference-server backends the agent can steer."""
