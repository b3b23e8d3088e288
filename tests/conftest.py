"""Test-session settings: nothing a test does may read or fill the user's real caches."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_minibert_cache(tmp_path_factory):
    """Point MINIBERT_CACHE at an empty folder, so no test can lean on a corpus fetched earlier on this machine."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MINIBERT_CACHE", str(tmp_path_factory.mktemp("minibert-cache")))
    yield
    patch.undo()
