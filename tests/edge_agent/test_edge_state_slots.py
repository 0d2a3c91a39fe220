"""StateSlots in process: the newest valid slot wins, a torn slot is ignored,
and the file never grows after creation (acks must work on a full disk)."""

from __future__ import annotations

import os

import pytest

from edge_agent.state_slots import SLOT, StateSlots


def test_reads_back_the_newest_state(tmp_path):
    s = StateSlots(tmp_path / "state")
    assert s.read() == {}
    for i in range(5):
        s.write({"acked": i})
    assert StateSlots(tmp_path / "state").read() == {"acked": 4}


def test_a_torn_newest_slot_falls_back_to_the_previous_state(tmp_path):
    path = tmp_path / "state"
    s = StateSlots(path)
    s.write({"acked": 1})
    s.write({"acked": 2})  # generation 2 lands in slot 0
    with open(path, "r+b") as fh:  # tear it: flip a payload byte so its checksum fails
        fh.seek(0 * SLOT + 20)
        b = fh.read(1)
        fh.seek(0 * SLOT + 20)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert StateSlots(path).read() == {"acked": 1}


def test_a_reopened_file_writes_past_the_newest_generation_without_reading_first(tmp_path):
    path = tmp_path / "state"
    s = StateSlots(path)
    for i in range(4):
        s.write({"acked": i})
    again = StateSlots(path)
    again.write({"acked": 100})  # no read() first: it must still become the newest state
    assert StateSlots(path).read() == {"acked": 100}


def test_the_file_never_grows_and_a_too_large_state_is_refused_without_writing(tmp_path):
    path = tmp_path / "state"
    s = StateSlots(path)
    s.write({"acked": 1})
    size = os.path.getsize(path)
    assert size == 2 * SLOT
    with pytest.raises(ValueError, match="does not fit"):
        s.write({"blob": "x" * SLOT})
    assert os.path.getsize(path) == size
    assert StateSlots(path).read() == {"acked": 1}
