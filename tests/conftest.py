import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Before torch loads: with another busy process, spinning OpenMP threads make small ops 10-100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Set-up products of this session's runs go to a cache of its own: a test that patches code the cache
# key cannot see must not leave its products where a user's runs (or a later session) would read them.
_SETUP = tempfile.mkdtemp(prefix="latentguard-setup-")
os.environ.setdefault("LATENTGUARD_SETUP_CACHE", _SETUP)
atexit.register(shutil.rmtree, _SETUP, ignore_errors=True)

import pytest  # noqa: E402

from tests.helpers import tiny_model, tiny_sae  # noqa: E402


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture(params=["standard", "jumprelu", "topk"])
def sae(request):
    return tiny_sae(request.param)

