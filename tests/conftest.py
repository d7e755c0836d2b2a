"""Fixtures shared by test modules."""
import os

# Under pytest-xdist (the README's `-n 2`) the workers share the cores: one torch thread each,
# and for the processes they start, rather than two threads each contending for them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Intra-op threads spin and stall when the machine's cores are busy elsewhere; the tiny
    models the tests use gain nothing from two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
