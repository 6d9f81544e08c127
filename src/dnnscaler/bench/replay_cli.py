"""``dnnscaler bench replay TRACE``: a recorded run's decisions, window by window, and
whether the policy as it is now makes the same ones.

TRACE is a decision trace (``policies.decision_trace``): the JSON lines ``dumps`` writes,
or the one-line packed form a convergence test's failure message and JUnit file carry
(``-`` reads standard input). Exit 0 when every decision replays, 1 when the policy now
departs from the recording (each difference printed), 2 on an unreadable trace.
"""

from __future__ import annotations

import argparse
import binascii
import gzip
import sys
import zlib
from pathlib import Path

from dnnscaler.policies import decision_trace as dt


def add_replay_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a recorded decision trace through the policy")
    p.add_argument("trace", help="trace file (JSON lines or the packed line), or - for stdin")
    p.add_argument("--quiet", action="store_true", help="only the differences")
    p.set_defaults(func=cmd_replay)


def read_trace(text: str) -> dt.Trace:
    """A trace from either form; raises ``ValueError`` saying why it is unreadable."""
    text = text.strip()
    if text.startswith("{"):
        return dt.loads(text)
    try:
        return dt.unpack(text)
    except (binascii.Error, gzip.BadGzipFile, zlib.error, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"neither JSON lines nor a packed trace: {e}") from None


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.trace == "-" else Path(args.trace).read_text()
        trace = read_trace(text)
        decisions = dt.replay(trace)
    except (OSError, ValueError, KeyError) as e:
        # A JSON error and ``InvalidValue`` (the malformed line and field) are ValueErrors.
        print(f"error: {args.trace}: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        note = f" ({trace.note})" if trace.note else ""
        print(f"policy {trace.policy} {trace.params or ''}, {len(trace.steps)} decisions{note}")
        for line in dt.window_lines(trace):
            print(line)
    diffs = dt.differences(trace, decisions)
    for line in diffs:
        print(line)
    print(
        f"{len(diffs)} of {len(trace.steps)} decisions differ"
        if diffs
        else f"all {len(trace.steps)} decisions replay"
    )
    return 1 if diffs else 0
