"""Answers from Triton 2.51 that are its own defects, not a verdict on the request.

Triton 2.51 (the server in the ``nvidia-pytriton`` 0.7.0 wheel, the newest there is)
corrupts its heap with request tracing on under load (docs/triton.md, "Known limits"), and
its gRPC frontend crashes on client-side cancellation of inference requests. One symptom
seen in the suite (2 of 7 fresh-clone runs on 12-03, the landing CI of 12-05; each time
within a few seconds of a model reload, answered in ~1 ms) is an ``INVALID_ARGUMENT``
saying that an input the request *did* carry "does not exist in request". Triton raises
that only when its request object lacks an input the frontend just added to it, so a
client that sends every input the model declares cannot have caused it. The same loss
seen one step later (fresh-clone run 58, 12-07: a batch of 8 requests 20 s into the
convergence test's reconfigurations, each answered in 10-14 ms): "unknown request input
name INPUT0", which Triton's backend API (``TRITONBACKEND_RequestInput``) returns when the
backend asks the request for an input it no longer holds.

Callers that judge reconfiguration (tests, benchmarks) use this to tell such a run from a
failed apply: it is recorded, with the server's words, and measured again; it is never
counted as a success.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

_MISSING_INPUT = re.compile(
    r"INVALID_ARGUMENT.*(?:input '(?P<quoted>[^']+)' does not exist in request"
    r"|unknown request input name (?P<bare>[^\s;'\"]+))"
)

MISSING_INPUT_DEFECT = (
    "Triton 2.51 answered INVALID_ARGUMENT ('input ... does not exist in request' or 'unknown"
    " request input name ...') for an input the request carried (a server-side defect,"
    " docs/triton.md)"
)


def missing_input_defect(message: str, sent_inputs: Collection[str]) -> bool:
    """Whether ``message`` is Triton denying an input that the request carried."""
    m = _MISSING_INPUT.search(message)
    return m is not None and (m.group("quoted") or m.group("bare")) in sent_inputs


def only_upstream_defects(
    messages: Iterable[str], sent_inputs: Collection[str], total: int
) -> str | None:
    """``MISSING_INPUT_DEFECT`` when each of ``total`` failed requests is that defect (all of
    them must be among ``messages``), else None (no failure, or one of another kind)."""
    kept = list(messages)
    if total <= 0 or len(kept) < total:
        return None
    if all(missing_input_defect(m, sent_inputs) for m in kept):
        return f"{MISSING_INPUT_DEFECT}: {kept[0]}" + (
            f" (and {total - 1} more)" if total > 1 else ""
        )
    return None
