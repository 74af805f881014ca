"""recipes/sac.py: runs end to end on Pendulum and resumes; slow: learns to swing the pendulum up."""

from __future__ import annotations

import pytest
from recipe_runner import run_recipe

from diffrl.train import read_metrics

TINY = [
    "online.steps=200",
    "online.random_steps=50",
    "online.batch_size=32",
    "eval.every=100",
    "eval.episodes=1",
    "logger.log_every=50",
]


def test_sac_recipe_runs_logs_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe("sac", [*TINY, f"logger.dir={run_dir}"], tmp_path)
    assert proc.stdout.strip().splitlines()[-1].startswith("sac: 200 steps")
    steps, _ = read_metrics(run_dir)["eval/return"]
    assert steps.tolist() == [100, 200]
    run_recipe("sac", [*TINY, "online.steps=300", f"resume={run_dir}"], tmp_path)
    steps, _ = read_metrics(run_dir)["eval/return"]
    assert steps.tolist() == [100, 200, 300]
    updates = read_metrics(run_dir)["train/updates"][1]
    assert updates[-1] == 250  # one update per env step after the 50 random ones, across the resume


@pytest.mark.slow
def test_sac_learns_pendulum(tmp_path):
    run_dir = tmp_path / "run"
    run_recipe("sac", ["online.steps=6000", "eval.every=2000", "eval.episodes=5", f"logger.dir={run_dir}"], tmp_path)
    steps, returns = read_metrics(run_dir)["eval/return"]
    assert returns[0] < -700 or returns[-1] > returns[0] + 300  # random play is about -1200
    assert returns[-1] > -400, returns.tolist()
