"""Telling Triton's own defects from failed requests (pure logic)."""

from __future__ import annotations

from dnnscaler.triton.known_defects import missing_input_defect, only_upstream_defects

DEFECT = (
    "InferenceServerException: [StatusCode.INVALID_ARGUMENT] [request id: <id_unknown>]"
    " input 'INPUT0' does not exist in request"
)
# The same loss seen from the backend's side (fresh-clone run 58).
LOST = (
    "InferenceServerException: [StatusCode.INVALID_ARGUMENT] [request id: <id_unknown>]"
    " unknown request input name INPUT0"
)
OTHER = "InferenceServerException: [StatusCode.UNAVAILABLE] Request for unknown model"


def test_missing_input_is_a_defect_only_for_an_input_that_was_sent() -> None:
    assert missing_input_defect(DEFECT, {"INPUT0"})
    assert not missing_input_defect(DEFECT, {"x"})
    assert not missing_input_defect(OTHER, {"INPUT0"})
    # Another status code with the same words is not the defect.
    assert not missing_input_defect(DEFECT.replace("INVALID_ARGUMENT", "INTERNAL"), {"INPUT0"})
    assert missing_input_defect(LOST, {"INPUT0"})
    assert not missing_input_defect(LOST, {"INPUT1"})
    assert not missing_input_defect(LOST.replace("INVALID_ARGUMENT", "INTERNAL"), {"INPUT0"})


def test_only_when_every_failure_is_known_and_kept() -> None:
    assert only_upstream_defects([], {"INPUT0"}, 0) is None
    assert only_upstream_defects([DEFECT, OTHER], {"INPUT0"}, 2) is None
    # More failures than were kept: the unseen ones could be anything.
    assert only_upstream_defects([DEFECT], {"INPUT0"}, 3) is None
    one = only_upstream_defects([DEFECT], {"INPUT0"}, 1)
    assert one is not None and one.endswith(DEFECT)
    two = only_upstream_defects([DEFECT, DEFECT], {"INPUT0"}, 2)
    assert two is not None and two.endswith("(and 1 more)")
    assert only_upstream_defects([LOST] * 8, {"INPUT0"}, 8) is not None
