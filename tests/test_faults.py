"""Faults the training loop survives: interrupts, non-finite losses, and resuming exactly in every phase.

Fast cases run in the default suite (an in-process Trainer on Pendulum); the slow part kills real recipe runs with
SIGKILL at random points, resumes them and compares them with an uninterrupted run (``-m slow``). Configuration,
checkpoint-file and dataset faults are in ``test_faults_run.py`` and ``test_faults_data.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffrl import registry
from diffrl.envs import make_env
from diffrl.train import read_metrics
from diffrl.train.faults import NonFiniteLossError, RunInterrupted
from diffrl.train.run import start_run
from diffrl.train.trainer import Hook, Trainer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _config(run_dir: Path, resume: Path | None = None, **online) -> OmegaConf:
    return OmegaConf.create(
        {
            "online": {"steps": 60, "random_steps": 10, "batch_size": 8, **online},
            "eval": {"every": 30, "episodes": 1, "exploration": "random"},
            "logger": {"dir": str(run_dir), "backend": "csv", "log_every": 5, "checkpoint_every": 25, "keep": 10},
            "resume": None if resume is None else str(resume),
        }
    )


def _trainer(
    cfg, interrupt_at: int | None = None, nan_at: int | None = None, halve_every: int = 0
) -> tuple[Trainer, torch.nn.Module]:
    """An online-only Trainer on Pendulum whose every update depends on the replay sample, the env and the global
    generator, so that any stream restored differently on resume changes the final weights."""
    torch.manual_seed(0)
    env = make_env("Pendulum-v1", max_episode_steps=20)
    env.set_seed(0)
    eval_env = make_env("Pendulum-v1", max_episode_steps=20)
    eval_env.set_seed(1)
    actor = registry.build(
        "actor",
        {"name": "tanh_normal", "hidden_sizes": [16]},
        obs_dim=3,
        action_dim=1,
        action_low=-2.0,
        action_high=2.0,
    )
    optim = torch.optim.Adam(actor.parameters(), lr=1e-2)
    calls = {"n": 0}

    def update(batch):
        calls["n"] += 1
        if interrupt_at is not None and calls["n"] == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-update: must be handled at the next safe point
        dist = actor.get_dist(batch.exclude("action"))
        target = batch["action"].clamp(-1.9, 1.9) + 0.1 * torch.randn_like(batch["action"])
        loss = -(dist.log_prob(target) * batch["next", "reward"].squeeze(-1).softmax(0)).sum()
        if nan_at is not None and calls["n"] == nan_at:
            loss = loss * float("nan")
        optim.zero_grad()
        loss.backward()
        optim.step()
        return {"loss_actor": loss.detach()}

    trainer = Trainer(
        cfg,
        update=update,
        run=start_run(cfg),
        policy=actor,
        env=env,
        eval_env=eval_env,
        checkpoint={"actor": actor, "optim": optim},
        hooks=[Hook(on_interval=lambda trainer: _halve(actor), every=halve_every)],
        progress_keys=None,
        verbose=False,
    )
    return trainer, actor


def _halve(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_sigint_saves_the_current_step_and_resume_is_exact_mid_episode(tmp_path):
    reference, ref_actor = _trainer(_config(tmp_path / "ref"))
    reference.run()
    reference.record.close()

    # Interrupted during update 24, i.e. online step 34 (updates start after 10 random steps): 14 env steps into the
    # second 20-step episode.
    interrupted, _ = _trainer(_config(tmp_path / "run"), interrupt_at=24)
    with pytest.raises(RunInterrupted) as info:
        interrupted.run()
    interrupted.record.close()
    assert info.value.exit_status == 130 and interrupted.step == 34
    assert "step_000000034.pt" in info.value.message and "resume=" in info.value.message
    assert (tmp_path / "run" / "checkpoints" / "step_000000034.pt").is_file()

    resumed, actor = _trainer(_config(tmp_path / "run", resume=tmp_path / "run"))
    out = resumed.run()
    resumed.record.close()
    assert out["steps"] == 60
    assert all(torch.equal(a, b) for a, b in zip(_weights(actor), _weights(ref_actor)))
    ref_metrics, metrics = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "run")
    for key in ("eval/return", "train/loss_actor", "train/episode_return"):
        assert torch.equal(torch.as_tensor(ref_metrics[key][1]), torch.as_tensor(metrics[key][1])), key


def _resume_matches_from_step_25(tmp_path, **options) -> None:
    """Run to the end; resume a copy of the run from its step-25 checkpoint; the final weights must be identical."""
    import shutil

    reference, ref_actor = _trainer(_config(tmp_path / "ref"), **options)
    reference.run()
    reference.record.close()
    shutil.copytree(tmp_path / "ref", tmp_path / "copy")
    for later in (tmp_path / "copy" / "checkpoints").glob("step_*.pt"):
        if not later.name.startswith("step_000000025"):
            later.unlink()
    # logger.dir as saved (a resume may not change it); the run continues in the directory of its checkpoint.
    resumed, actor = _trainer(_config(tmp_path / "ref", resume=tmp_path / "copy"), **options)
    resumed.run()
    resumed.record.close()
    assert all(torch.equal(a, b) for a, b in zip(_weights(actor), _weights(ref_actor)))


def test_resume_from_a_periodic_checkpoint_mid_episode_is_exact(tmp_path):
    # checkpoint_every 25: step 25 is 5 steps into the second 20-step episode
    _resume_matches_from_step_25(tmp_path)


def test_a_periodic_hook_at_a_checkpoint_step_is_in_that_checkpoint(tmp_path):
    # The hook (every 25 online steps, e.g. an EDIS refit) and the checkpoint (every 25) fall on the same step: the
    # checkpoint must hold the hook's effect, or a run resumed from it skips the hook.
    _resume_matches_from_step_25(tmp_path, halve_every=25)


def test_non_finite_loss_stops_the_run_naming_step_and_term_and_saves_nothing_after(tmp_path):
    trainer, _ = _trainer(_config(tmp_path / "run"), nan_at=30)  # update 30 is online step 40
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    trainer.record.close()
    assert info.value.step == 40 and info.value.term == "loss_actor"
    assert "step_000000025.pt" in str(info.value)  # the last good checkpoint, named
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert saved == ["step_000000025.pt"]  # nothing at or after the NaN


# ------------------------------------------------------------------------------------------------ slow: SIGKILL

TINY_O2O = ["offline.steps=60", "online.steps=60", "eval.every=30", "eval.episodes=1", "logger.checkpoint_every=10"]
TINY_EDIS = ["edis.diffusion_steps=20", "edis.num_samples=64", "edis.energy_steps=5", "online.retrain_every=30"]
KILL_CASES = {
    "calql": [*TINY_O2O, "data.batch_size=32"],
    "iql": [*TINY_O2O, "data.batch_size=32"],
    "edis_calql": [*TINY_O2O, "data.batch_size=32", *TINY_EDIS],
    "qsm": [
        "online.steps=120",
        "online.random_steps=40",
        "online.batch_size=32",
        "eval.every=60",
        "eval.episodes=1",
        "logger.checkpoint_every=10",
    ],
    "diffusion_ql": [
        "offline.steps=80",
        "eval.every=40",
        "eval.episodes=1",
        "data.batch_size=32",
        "logger.checkpoint_every=10",
    ],
}


def _launch(recipe: str, args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "DIFFRL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(RECIPES / f"{recipe}.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_at_random_after_new_checkpoints(proc: subprocess.Popen, run: Path, rng: random.Random) -> bool:
    """SIGKILL ``proc`` at a random instant once 1-2 checkpoints newer than its start appeared; False if it ended."""
    seen = {p.name for p in (run / "checkpoints").glob("step_*.pt")}
    start, target = set(seen), rng.randint(1, 2)
    while proc.poll() is None:
        seen |= {p.name for p in (run / "checkpoints").glob("step_*.pt")}
        if len(seen - start) >= target:
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the middle of the next updates or env steps
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    return False


def _final_state(run_dir: Path) -> dict:
    last = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=False)["objects"]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(KILL_CASES))
def test_sigkill_at_random_points_then_resume_matches_the_uninterrupted_run(recipe, tmp_path):
    args = [*KILL_CASES[recipe], "seed=3"]
    ref = tmp_path / "ref"
    proc = _launch(recipe, [*args, f"logger.dir={ref}"], tmp_path)
    assert proc.wait(timeout=1800) == 0, proc.stderr.read()[-2000:]
    rng = random.Random(recipe)
    run = tmp_path / "run"
    kills, args_now = 0, [*args, f"logger.dir={run}"]
    while True:  # kill at a random instant after 1-2 new checkpoints, up to 4 times; then resume to the end
        proc = _launch(recipe, args_now, tmp_path)
        if kills < 4 and _kill_at_random_after_new_checkpoints(proc, run, rng):
            kills += 1
            args_now = [*args, f"resume={run}"]
            continue
        assert proc.wait(timeout=1800) == 0, proc.stderr.read()[-2000:]
        break
    assert kills >= 2  # 5 recipes: at least 10 random kill points in all
    ref_state, state = _final_state(ref), _final_state(run)
    assert sorted(ref_state) == sorted(state)
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state if isinstance(ref_state[k], torch.Tensor))
    ref_metrics, metrics = read_metrics(ref), read_metrics(run)
    for key in ref_metrics:
        if key.startswith(("eval/", "train/loss")):
            assert torch.equal(torch.as_tensor(ref_metrics[key][1]), torch.as_tensor(metrics[key][1])), key
