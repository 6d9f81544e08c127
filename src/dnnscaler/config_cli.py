"""`dnnscaler config check FILE`: validate a daemon's TOML file without starting anything."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from dnnscaler.core.settings import ConfigError, Resolved, read_file

Resolver = Callable[[str, Mapping[str, str], Mapping[str, Any], Mapping[str, Any]], Resolved]


def _resolvers() -> dict[str, Resolver]:
    from dnnscaler.agents.cli import resolve_config as agent
    from dnnscaler.controller.cli import resolve_config, servable

    def controller(
        path: str, env: Mapping[str, str], flags: Mapping[str, Any], doc: Mapping[str, Any]
    ) -> Resolved:
        return servable(resolve_config(path, env, flags, doc), path)

    return {"controller": controller, "agent": agent}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check a daemon's configuration file")
    verbs = p.add_subparsers(dest="config_command", metavar="VERB", required=True)
    c = verbs.add_parser(
        "check",
        help="validate FILE ([controller] and/or [agent] tables) as the daemon would at start",
        description="Validates FILE exactly as `dnnscaler controller --config FILE` or"
        " `dnnscaler agent --config FILE` would, DNNSCALER_* variables of this environment"
        " included (--no-env: the file alone), and prints each setting and where it came"
        " from. Exit 0 if valid, 2 with the field and the file named if not.",
    )
    c.add_argument("file", metavar="FILE")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--no-env", action="store_true", help="ignore DNNSCALER_* environment variables")
    c.set_defaults(func=run_check)


def check(path: str, env: Mapping[str, str]) -> dict[str, Resolved]:
    """Each daemon table of ``path``, resolved; raises ``ConfigError`` on the first error."""
    doc = read_file(path)
    resolvers = _resolvers()
    unknown = [k for k in doc if k not in resolvers]
    if unknown:
        raise ConfigError(
            path,
            unknown[0],
            f"unknown table; a file holds [{'] and/or ['.join(resolvers)}]",
        )
    if not doc:
        raise ConfigError(path, "file", f"holds no [{'] or ['.join(resolvers)}] table")
    return {name: resolvers[name](path, env, {}, doc) for name in doc}


def run_check(args: argparse.Namespace) -> int:
    env: Mapping[str, str] = {} if args.no_env else os.environ
    try:
        out = check(args.file, env)
    except ConfigError as e:
        if args.json:
            print(json.dumps({"valid": False, "error": str(e), "field": e.field, "where": e.where}))
        else:
            print(f"dnnscaler config: {e}", file=sys.stderr)
        return 2
    if args.json:
        doc = {
            "valid": True,
            "file": args.file,
            "daemons": {
                name: {k: {"value": _plain(getattr(r.value, k)), "from": o} for k, _, o in r.rows()}
                for name, r in out.items()
            },
        }
        print(json.dumps(doc, indent=2))
        return 0
    for name, r in out.items():
        rows = r.rows()
        wk = max(len(k) for k, _, _ in rows)
        wv = max(len(v) for _, v, _ in rows)
        print(f"[{name}]  valid")
        for k, v, o in rows:
            print(f"  {k:<{wk}}  {v:<{wv}}  {o}")
    return 0


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
