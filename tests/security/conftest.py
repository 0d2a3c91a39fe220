import pytest

from tests.faults.harness import LIVE


@pytest.fixture(autouse=True)
def _kill_leftovers():
    yield
    while LIVE:
        p = LIVE.pop()
        if p.poll() is None:
            p.kill()
            p.wait(10)
