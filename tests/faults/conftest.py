import pytest

from tests.faults.harness import LIVE


@pytest.fixture(autouse=True)
def _kill_leftovers():
    """A failed test must not leave an agent redialling a port a later test's learner gets."""
    yield
    while LIVE:
        p = LIVE.pop()
        if p.poll() is None:
            p.kill()
            p.wait(10)
