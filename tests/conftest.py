"""Test-session settings: nothing a test does may read or fill the user's real caches."""

import atexit
import os
import shutil
import tempfile

import pytest

import global_state

# Hugging Face's caches (datasets writes an Arrow copy of every CSV it loads) go to a folder of this test session,
# removed at its end. Set here, at import, because the libraries read these variables when they are first imported;
# subprocesses the tests start inherit them.
HF_HOME = tempfile.mkdtemp(prefix="minibert-tests-hf-")
os.environ["HF_HOME"] = HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(HF_HOME, "datasets")
os.environ.pop("HF_HUB_CACHE", None)
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def isolated_minibert_cache(tmp_path_factory):
    """Point MINIBERT_CACHE at an empty folder, so no test can lean on a corpus fetched earlier on this machine."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MINIBERT_CACHE", str(tmp_path_factory.mktemp("minibert-cache")))
    yield
    patch.undo()


@pytest.fixture
def torch_load_flags(monkeypatch):
    """The `weights_only` argument of every torch.load call made during the test, in order."""
    import torch

    flags = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        flags.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return flags


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models on a shared 2-core machine); restored afterwards."""
    with global_state.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained():
    """The tiny model trained on test_inference's STORY (built once per process; copy it before changing it)."""
    from test_inference import trained_model_folder

    return trained_model_folder()


def _check_restored(before: dict, where: str) -> None:
    changed = global_state.changed_since(before)
    assert not changed, f"{where} changed process-wide state and did not restore it (before, after): {changed}"


@pytest.fixture(autouse=True, scope="module")
def module_restores_global_state(request):
    """A module's fixtures (e.g. one torch thread for its tiny models) put back what they changed."""
    before = global_state.snapshot()
    yield
    _check_restored(before, request.module.__name__)


@pytest.fixture(autouse=True)
def test_restores_global_state(request):
    """A test leaves torch's thread count, log levels and progress bars as it found them."""
    before = global_state.snapshot()
    yield
    _check_restored(before, request.node.nodeid)
