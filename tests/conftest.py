import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from tests.helpers import tiny_model, tiny_sae  # noqa: E402


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture(params=["standard", "jumprelu", "topk"])
def sae(request):
    return tiny_sae(request.param)

