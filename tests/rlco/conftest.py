import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests train small networks: one thread is fastest on the shared 2-core machines
    (torch's default of one per core fights the MuJoCo envs and the other jobs for them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
