"""Fixtures shared by test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Intra-op threads spin and stall when the machine's cores are busy elsewhere; the tiny
    models the tests use gain nothing from two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
