"""The diffusion_ql recipe end to end: a command run from another directory, its metrics and checkpoints, an exact
resume, and the per-task configs with the paper's per-dataset hyperparameters."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from recipe_runner import random_pendulum_dataset, run_recipe

from diffrl.data.generators import PENDULUM_REF_MAX, PENDULUM_REF_MIN
from diffrl.train import load_config, read_metrics

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE = RECIPES / "diffusion_ql.py"
TINY = [
    "offline.steps=20",
    "eval.every=10",
    "eval.episodes=1",
    "data.batch_size=32",
    "logger.log_every=5",
    "actor.hidden_sizes=[16,16]",
    "critic.hidden_sizes=[16,16]",
    "eval.selection.num_candidates=4",
    "optim.targets.actor_start=5",
    "threads=1",
]


@pytest.fixture(scope="module")
def tiny_dataset(minari_tmp_path):
    """Three random Pendulum episodes with the pendulum reference scores."""
    return random_pendulum_dataset("test-dql/pendulum/random-v0", num_episodes=3)


def test_recipe_runs_from_another_directory_and_writes_metrics_and_checkpoints(tiny_dataset, tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_recipe(RECIPE, [*TINY, f"data.dataset_id={tiny_dataset}", f"logger.dir={run_dir}"], elsewhere)
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("diffusion_ql: 20 steps")
    assert lines[-1].startswith("diffusion_ql: final eval/return") and "dataset average return" in lines[-1]
    metrics = read_metrics(run_dir)
    steps, scores = metrics["eval/normalized_score"]
    assert steps.tolist() == [10, 20]
    returns = metrics["eval/return"][1]
    expected = 100 * (returns - PENDULUM_REF_MIN) / (PENDULUM_REF_MAX - PENDULUM_REF_MIN)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    for key in ("train/loss_qvalue", "train/bc_loss", "train/q_term", "train/critic_grad_norm"):
        assert metrics[key][0].tolist() == [5, 10, 15, 20], key
    assert np.isin(metrics["train/maximised_critic"][1], [0, 1]).all()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt")) == [
        "step_000000010.pt",
        "step_000000020.pt",
    ]
    assert (run_dir / "config.yaml").is_file()
    assert not any(elsewhere.iterdir())  # nothing written to the working directory


@pytest.mark.slow
def test_recipe_with_compile_true_trains_and_evaluates(tiny_dataset, tmp_path):
    """``compile=true`` (the per-task files' setting) runs the compiled loss terms end to end (about a minute of
    inductor compilation, hence slow)."""
    run_dir = tmp_path / "run"
    run_recipe(RECIPE, [*TINY, "compile=true", f"data.dataset_id={tiny_dataset}", f"logger.dir={run_dir}"], tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["eval/normalized_score"][0].tolist() == [10, 20]
    losses = metrics["train/loss_qvalue"][1]
    assert np.isfinite(losses).all() and np.isfinite(metrics["train/bc_loss"][1]).all()


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_diffusion_ql", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_continues_to_the_same_result_as_an_uninterrupted_run(tiny_dataset, tmp_path, capsys):
    main = load_recipe().main  # in this process: the command-line path is covered above, imports cost seconds
    common = [*TINY, f"data.dataset_id={tiny_dataset}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    main(load_config(RECIPE, [*common, f"logger.dir={straight}"]))
    main(load_config(RECIPE, [*common, "offline.steps=10", f"logger.dir={split}"]))
    capsys.readouterr()
    result = main(load_config(RECIPE, [f"resume={split}", "offline.steps=20"]))
    assert capsys.readouterr().out.strip().splitlines()[-2].startswith("diffusion_ql: 10 steps")  # 10 -> 20 here
    assert result["steps"] == 20
    a, b = read_metrics(straight), read_metrics(split)
    for key in ("eval/return", "train/loss_qvalue", "train/loss_actor", "train/bc_loss", "train/target_value"):
        assert a[key][0].tolist() == b[key][0].tolist(), key
        np.testing.assert_allclose(b[key][1], a[key][1], rtol=1e-5, atol=1e-6, err_msg=key)


# The official per-dataset table: file stem -> eta, gradient-norm clip, actor lr, max-Q backup, training steps.
PAPER = json.loads((Path(__file__).parent / "data" / "diffusion_ql_paper_hyperparameters.json").read_text())


def test_every_per_task_config_loads_strictly_with_the_papers_hyperparameters():
    files = {f.stem: f for f in (RECIPES / "configs" / "diffusion_ql").glob("*.yaml")}
    assert set(files) == set(PAPER)
    for stem, paper in PAPER.items():
        cfg = load_config(RECIPE, [f"config={files[stem].name}"])
        got = {
            "eta": cfg.loss.eta,
            "grad_norm": cfg.optim.grad_norm,
            "actor_lr": cfg.optim.actor_lr,
            "max_q_backup": cfg.loss.max_q_backup,
            "steps": cfg.offline.steps,
        }
        assert got == paper, stem
        assert cfg.optim.critic_lr == 3e-4 and cfg.gamma == 0.99 and cfg.data.batch_size == 256
        assert cfg.actor.hidden_sizes == cfg.critic.hidden_sizes == [256, 256, 256] and cfg.actor.num_steps == 5
        assert cfg.eval.selection.num_candidates == 50
        if stem.startswith("antmaze"):  # (r - 0.5) * 4
            assert cfg.data.dataset_id.startswith("D4RL/antmaze/")
            assert (cfg.data.reward_scale, cfg.data.reward_bias) == (4.0, -2.0)
        else:
            assert (cfg.data.reward_scale, cfg.data.reward_bias) == (1.0, 0.0)
        assert stem in cfg.logger.dir
