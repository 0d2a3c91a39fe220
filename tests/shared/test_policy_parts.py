"""Policy parts on a grid every link shares, so the learner encodes each part once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.protocol.stream import PolicySender


def spans(sender: PolicySender, version: int, size: int) -> list[tuple[int, int]]:
    sender.begin(version, size)
    out = []
    while (span := sender.next_part(version)) is not None:
        out.append(span)
    return out


def test_a_resumed_send_rejoins_the_grid_after_its_first_part():
    assert spans(PolicySender(0, partial=(2, 5), part_bytes=4), 2, 14) == [(5, 8), (8, 12), (12, 14)]


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 500), part=st.integers(1, 64), got=st.integers(0, 500))
def test_every_part_but_a_resumes_first_is_on_the_grid(size, part, got):
    fresh = spans(PolicySender(0, part_bytes=part), 3, size)
    resumed = spans(PolicySender(0, partial=(3, got), part_bytes=part), 3, size)
    assert resumed[-1][1] == size and all(a < b for a, b in resumed)
    assert set(resumed[1:]) <= set(fresh)
    assert [a for a, _ in resumed[1:]] == [b for _, b in resumed[:-1]]  # no gap, no overlap
