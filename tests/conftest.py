import pytest


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    """A failed test must not leave an agent or learner running: an agent left
    redialling could reach a later test's learner on a reused port."""
    yield
    from harness import kill_all

    kill_all()
