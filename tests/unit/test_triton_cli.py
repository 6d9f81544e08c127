"""Argument parsing of the triton-local and loadgen subcommands."""

from __future__ import annotations

import argparse

import pytest

from dnnscaler.loadgen import cli as loadgen_cli
from dnnscaler.triton import cli as triton_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    triton_cli.register(sub)
    loadgen_cli.register(sub)
    return parser


def test_triton_local_args() -> None:
    args = _parser().parse_args(["triton-local", "--demo", "--models", "echo", "--grpc-port", "9"])
    assert args.func is triton_cli.run
    assert args.demo and args.models == ["echo"] and args.grpc_port == 9
    assert args.http_port is None and not args.no_trace


def test_triton_local_needs_a_source() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["triton-local"])


def test_loadgen_modes_are_exclusive() -> None:
    args = _parser().parse_args(["loadgen", "--url", "127.0.0.1:1", "--model", "m", "--rate", "5"])
    assert args.func is loadgen_cli.run and args.rate == 5.0
    with pytest.raises(SystemExit):
        _parser().parse_args(
            ["loadgen", "--url", "u", "--model", "m", "--rate", "5", "--concurrency", "2"]
        )


def test_loadgen_refuses_remote_targets() -> None:
    args = _parser().parse_args(["loadgen", "--url", "10.1.1.1:1", "--model", "m", "--rate", "1"])
    assert args.func(args) == 2
