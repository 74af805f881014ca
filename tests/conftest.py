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


# Helpers shared by several test modules (``from conftest import ...``; pytest puts tests/ on sys.path).
def transition_batch(*batch: int, obs_dim: int, action_dim: int, keys: dict | None = None):
    """Random transitions of batch shape ``batch``, with both terminated and truncated-but-not-terminated ones (the
    latter must bootstrap); ``keys`` renames entries (``{"observation": "obs", ...}``) to exercise ``set_keys``."""
    import torch
    from tensordict import TensorDict

    keys = {
        "observation": "observation",
        "action": "action",
        "reward": "reward",
        "done": "done",
        "terminated": "terminated",
        **(keys or {}),
    }
    terminated = torch.rand(*batch, 1) < 0.3
    truncated = (torch.rand(*batch, 1) < 0.3) & ~terminated
    return TensorDict(
        {
            keys["observation"]: torch.randn(*batch, obs_dim),
            keys["action"]: torch.rand(*batch, action_dim) * 2 - 1,
            "next": {
                keys["observation"]: torch.randn(*batch, obs_dim),
                keys["reward"]: torch.randn(*batch, 1),
                keys["done"]: terminated | truncated,
                keys["terminated"]: terminated,
            },
        },
        batch_size=list(batch),
    )


def pendulum_transitions(n: int, mc_return: float, episode_length: int | None = None):
    """``n`` random Pendulum-shaped offline transitions (seed 0, none done) whose ``mc_return`` is ``mc_return``; with
    ``episode_length``, an ``"episode"`` index too, as ``load_dataset`` returns."""
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    data = {"observation": torch.randn(n, 3, generator=g), "action": torch.rand(n, 1, generator=g) * 4 - 2}
    if episode_length is not None:
        data["episode"] = torch.arange(n) // episode_length
    never = torch.zeros(n, 1, dtype=torch.bool)
    data |= {
        "mc_return": torch.full((n, 1), mc_return),
        ("next", "observation"): torch.randn(n, 3, generator=g),
        ("next", "reward"): -torch.rand(n, 1, generator=g),
        ("next", "done"): never,
        ("next", "terminated"): never.clone(),
        ("next", "truncated"): never.clone(),
    }
    return TensorDict(data, [n])
