"""Shared test set-up: the thread count and a preprocessing cache per test module."""

import pytest
import torch

# The tests use tiny models: one intra-op thread is fastest, and avoids oversubscribing small CI machines.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A preprocessing cache per test module; simulations started by a test get it as FEDSEQREC_CACHE."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache_env(cache, monkeypatch):
    """This process uses the module's cache too (`pytestmark = pytest.mark.usefixtures("cache_env")`)."""
    monkeypatch.setenv("FEDSEQREC_CACHE", str(cache))
