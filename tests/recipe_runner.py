"""Helpers shared by the recipe tests: run a recipe as a user would, and a tiny random Pendulum dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from diffrl.data import make_dataset
from diffrl.data.generators import PENDULUM_REF_MAX, PENDULUM_REF_MIN

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def run_recipe(
    recipe: str | Path, args: list[str], cwd: Path, status: int = 0, timeout: float = 900
) -> subprocess.CompletedProcess:
    """``python recipes/<recipe>.py *args`` in ``cwd`` on one thread without a progress bar; asserts the exit status
    (showing the end of stderr when it differs) and returns the completed process."""
    script = recipe if isinstance(recipe, Path) else RECIPES / f"{recipe}.py"
    env = {**os.environ, "DIFFRL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


def random_pendulum_dataset(dataset_id: str, num_episodes: int) -> str:
    """Write ``num_episodes`` uniformly random Pendulum-v1 episodes (200 steps each, seed 0) with the pendulum
    reference scores as local Minari dataset ``dataset_id`` and return the id."""
    make_dataset(
        "Pendulum-v1",
        "random",
        dataset_id,
        num_episodes=num_episodes,
        seed=0,
        ref_min_score=PENDULUM_REF_MIN,
        ref_max_score=PENDULUM_REF_MAX,
    )
    return dataset_id
