"""Shared test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def minari_tmp_path(tmp_path_factory):
    """Point ``MINARI_DATASETS_PATH`` at one temporary directory for the whole test session.

    Autouse, so no test reads or writes the user's ``~/.minari``; datasets built by one test (e.g. the registered
    pendulum datasets) are visible to later tests of the session. Yields the directory's ``Path``.
    """
    path = tmp_path_factory.mktemp("minari_datasets")
    patch = pytest.MonkeyPatch()
    patch.setenv("MINARI_DATASETS_PATH", str(path))
    yield path
    patch.undo()


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny networks run fastest that way, and immune to a busy CPU's thread contention.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
