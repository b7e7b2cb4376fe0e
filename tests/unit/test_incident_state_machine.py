"""The incident state machine as a pure table: every ordered pair of statuses, legal or not."""

from __future__ import annotations

import itertools

import pytest

from civitas_ray.errors import Conflict
from civitas_ray.incidents.schemas import IncidentStatus as S
from civitas_ray.incidents.service import TRANSITIONS, allowed_next, check_transition

pytestmark = pytest.mark.unit

LEGAL = {
    (S.OPEN, S.ACKNOWLEDGED), (S.OPEN, S.RESOLVED),
    (S.ACKNOWLEDGED, S.RESOLVED),
    (S.RESOLVED, S.CLOSED), (S.RESOLVED, S.OPEN),
}
PAIRS = list(itertools.product(S, S))
ILLEGAL = [p for p in PAIRS if p not in LEGAL]


def test_table_covers_every_status_and_matches_the_spec() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL), ids=lambda s: str(s))
def test_legal_transition_passes(current: S, target: S) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ILLEGAL, ids=lambda s: str(s))
def test_illegal_transition_is_a_conflict_naming_the_allowed_states(current: S,
                                                                    target: S) -> None:
    with pytest.raises(Conflict) as err:
        check_transition(current, target)
    allowed = allowed_next(current)
    assert err.value.extra["allowed"] == [str(s) for s in allowed]
    for state in allowed:
        assert state in err.value.detail
    if not allowed:
        assert "final" in err.value.detail


def test_pair_count_is_complete() -> None:
    assert len(PAIRS) == 16 and len(ILLEGAL) == 11


def test_allowed_next_is_in_lifecycle_order() -> None:
    assert allowed_next(S.OPEN) == [S.ACKNOWLEDGED, S.RESOLVED]
    assert allowed_next(S.ACKNOWLEDGED) == [S.RESOLVED]
    assert allowed_next(S.RESOLVED) == [S.OPEN, S.CLOSED]
    assert allowed_next(S.CLOSED) == []
