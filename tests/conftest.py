import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Before torch loads: with another busy process, spinning OpenMP threads make small ops 10-100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from tests.helpers import tiny_model, tiny_sae  # noqa: E402


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture(params=["standard", "jumprelu", "topk"])
def sae(request):
    return tiny_sae(request.param)

