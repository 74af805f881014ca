"""Cal-QL+EDIS and IQL+EDIS: the EDIS hook's schedule and batches, the recipes end to end, resume, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import pendulum_transitions
from omegaconf import OmegaConf
from recipe_runner import random_pendulum_dataset, run_recipe

from diffrl import registry
from diffrl.data import OfflineReplayBuffer
from diffrl.envs import make_env
from diffrl.train import load_config, read_metrics, start_run
from diffrl.train.config import ConfigError
from diffrl.train.edis_hook import EDISHook, build_edis
from diffrl.train.trainer import Trainer, TrainerSettings

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
OFFLINE_MC = 7.0  # every offline transition of the in-process tests carries this mc_return; online ones carry 0
# An EDIS generator that fits in a fraction of a second: the tests check the wiring, not the generator's quality.
TINY_EDIS = {
    "diffusion_steps": 20,
    "num_samples": 64,
    "sampler_steps": 4,
    "energy_steps": 5,
    "energy_positives": 16,
    "negative_sampler_steps": 2,
    "num_negatives": 2,
    "denoiser": {"width": 16, "blocks": 1, "embed_dim": 8},
    "energy": {"width": 16, "depth": 2},
}
TINY = [
    "offline.steps=20",
    "online.steps=30",
    "online.retrain_every=10",
    "eval.episodes=1",
    "eval.every=25",
    "data.batch_size=32",
    "logger.log_every=10",
    "logger.keep=10",
    "env.max_episode_steps=50",
    "actor.hidden_sizes=[32, 32]",
    "critic.hidden_sizes=[32, 32]",
    *(f"edis.{key}={value}" for key, value in TINY_EDIS.items()),
]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dataset(minari_tmp_path):
    """Three random Pendulum episodes with the pendulum reference scores: enough to exercise a recipe."""
    return random_pendulum_dataset("test-edis/pendulum/random-v0", num_episodes=3)


# ---------------------------------------------------------------------------------------------- the hook in the loop
def offline_buffer(n: int = 64) -> OfflineReplayBuffer:
    data = pendulum_transitions(n, OFFLINE_MC)  # tests/conftest.py
    return OfflineReplayBuffer(data, batch_size=8, dataset_id="test/pendulum-v0", env_id="Pendulum-v1")


def test_hook_regenerates_on_schedule_and_online_batches_are_exactly_synthetic_plus_online(tmp_path):
    batches = []

    def update(batch):
        batches.append(batch.clone())
        return {"loss_fake": torch.tensor(0.0)}

    actor = registry.build(
        "actor",
        {"name": "tanh_normal", "hidden_sizes": [8], "action_low": -2.0, "action_high": 2.0},
        obs_dim=3,
        action_dim=1,
    )
    edis = build_edis(
        {"name": "edis", "synthetic_fraction": 0.25, "mark_key": "synthetic", **TINY_EDIS},
        obs_dim=3,
        action_dim=1,
        device="cpu",
        seed=0,
    )
    hook = EDISHook(edis, actor, every=4, extra_updates=2, verbose=False)
    settings = TrainerSettings(
        offline_steps=3, online_steps=8, batch_size=8, mixing_ratio=0.0, eval_every=0, eval_episodes=1, log_every=1
    )
    run = start_run(OmegaConf.create({"logger": {"dir": str(tmp_path / "run"), "backend": "csv"}, "resume": None}))
    loop = Trainer(
        settings,
        update=update,
        offline_rb=offline_buffer(),
        policy=actor,
        run=run,
        env=lambda: make_env("Pendulum-v1", seed=0, max_episode_steps=5),
        checkpoint={"edis": hook},
        hooks=[hook],
        progress_keys=None,
    )
    loop.run()
    run.close()

    # fits at the switch (online step 0) and at online step 4; the one at step 8 (the end) is skipped
    assert hook.regenerations == 2 and int(edis.num_fits) == 2
    steps, values = read_metrics(tmp_path / "run")["edis/regenerations"]
    assert steps.tolist() == [3, 7] and values.tolist() == [1, 2]
    assert read_metrics(tmp_path / "run")["edis/energy_loss/state"][0].tolist() == [7]  # no online data at the switch
    assert set(hook.last) >= {"edis/energy_loss/state", "edis/energy_loss/policy", "edis/energy_loss/transition"}
    # 3 offline updates, 2 x 2 extra updates on pure pool batches, 8 online updates
    assert len(batches) == loop.updates == 3 + 4 + 8
    online = [b for b in batches[3:] if "synthetic" in b.keys()]
    extra = [b for b in batches[3:] if "synthetic" not in b.keys()]
    assert len(online) == 8 and len(extra) == 4
    for batch in online:  # round(0.25 * 8) synthetic rows, the rest online data only (mixing_ratio 0: no offline)
        assert int(batch["synthetic"].sum()) == 2
        assert bool((batch["mc_return"][~batch["synthetic"]] == 0).all())
    for batch in extra:  # pure pool rows: generated, so none equals an offline or online transition exactly
        assert batch.batch_size == (8,) and bool((batch["mc_return"] == 0).all())
        assert not bool((batch["mc_return"] == OFFLINE_MC).any())


def test_hook_state_round_trips_the_generator():
    edis = build_edis({"name": "edis", **TINY_EDIS}, obs_dim=3, action_dim=1, device="cpu", seed=0)
    edis.fit(offline_buffer())
    hook = EDISHook(edis, policy=None, every=10)
    hook.regenerations = 3
    fresh = build_edis({"name": "edis", **TINY_EDIS}, obs_dim=3, action_dim=1, device="cpu", seed=1)
    restored = EDISHook(fresh, policy=None, every=10)
    restored.load_state_dict(hook.state_dict())
    assert restored.regenerations == 3 and int(fresh.num_fits) == 1
    # the pool and the transform's generator come back too, so a resumed run draws the same synthetic rows
    assert torch.equal(fresh.pool["observation"], edis.pool["observation"])
    assert torch.equal(fresh._generator.get_state(), edis._generator.get_state())
    torch.testing.assert_close(fresh.normalizer.mean, edis.normalizer.mean)
    for a, b in zip(fresh.ema_denoiser.parameters(), edis.ema_denoiser.parameters()):
        torch.testing.assert_close(a, b)


def test_build_edis_turns_bad_options_into_config_errors():
    with pytest.raises(ConfigError, match="guidance has unknown energies"):
        build_edis({"name": "edis", "guidance": {"reward": 1.0}}, obs_dim=3, action_dim=1, device="cpu", seed=0)
    with pytest.raises(ConfigError, match="unknown EDIS option"):
        build_edis({"name": "edis", "num_sample": 10}, obs_dim=3, action_dim=1, device="cpu", seed=0)
    with pytest.raises(ConfigError, match="must be >= 0"):
        EDISHook(build_edis({"name": "edis"}, obs_dim=3, action_dim=1, device="cpu", seed=0), None, every=-1)


# ---------------------------------------------------------------------------------------------- the recipes
@pytest.mark.parametrize("name", ["edis_calql", "edis_iql"])
def test_recipe_runs_both_phases_with_regenerations_from_another_directory(name, tiny_dataset, tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    extra = ["value.hidden_sizes=[32, 32]"] if name == "edis_iql" else []
    # 10-step episodes end online; rewards x100 for training tell raw from transformed returns in the log
    extra += ["env.max_episode_steps=10", "data.reward_scale=100.0"]
    proc = run_recipe(name, [*TINY, *extra, f"data.dataset_id={tiny_dataset}", f"logger.dir={run_dir}"], elsewhere)
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{name}: 50 steps") and "normalized score offline" in summary
    assert "EDIS: unguided pool of 64 samples at online step 0" in proc.stdout
    assert "EDIS: guided pool of 64 samples at online step 10" in proc.stdout
    metrics = read_metrics(run_dir)
    # the switch (global step 20), online steps 10 and 20; none at the last step (30)
    assert metrics["edis/regenerations"][0].tolist() == [20, 30, 40]
    assert metrics["edis/energy_loss/policy"][0].tolist() == [30, 40]  # energies need online data and the policy
    assert metrics["eval/normalized_score"][0].tolist() == [20, 25, 50]
    # training episodes are logged in raw reward units, as calql/iql log them: 10 Pendulum steps >= 10 * -16.3
    returns = metrics["train/episode_return"][1]
    assert len(returns) == 3 and (returns >= -163.0).all() and (returns < 0).all(), returns
    assert not any(elsewhere.iterdir())  # nothing written to the working directory


def test_edis_calql_resumes_mid_online_with_the_same_regeneration_schedule(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_recipe("edis_calql", [*TINY, f"data.dataset_id={tiny_dataset}", f"logger.dir={run_dir}"], tmp_path)
    before = read_metrics(run_dir)
    uninterrupted = before["edis/regenerations"]
    checkpoint = run_dir / "checkpoints" / "step_000000025.pt"  # online step 5, between two regenerations
    proc = run_recipe("edis_calql", [f"resume={checkpoint}"], tmp_path)
    assert "unguided" not in proc.stdout  # the generator and its pool were restored, not refitted at the switch
    assert proc.stdout.strip().splitlines()[-1].startswith("edis_calql: 25 steps")
    after = read_metrics(run_dir)
    resumed = after["edis/regenerations"]
    assert resumed[0].tolist() == uninterrupted[0].tolist() == [20, 30, 40]
    assert resumed[1].tolist() == [1, 2, 3]
    # exact: the same pool rows, the same env episode, the same generators: every logged number is the same
    for key in ("train/loss_qvalue", "train/loss_actor", "eval/normalized_score", "edis/diffusion_loss"):
        assert before[key][1].tolist() == after[key][1].tolist(), key


def test_bad_edis_option_is_a_one_line_error(tiny_dataset, tmp_path):
    proc = run_recipe(
        "edis_calql",
        [*TINY, f"data.dataset_id={tiny_dataset}", "edis.synthetic_fraction=1.5", f"logger.dir={tmp_path / 'run'}"],
        tmp_path,
        status=2,
    )
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: invalid edis config: synthetic_fraction must be in [0, 1], got 1.5."
    )


@pytest.mark.parametrize("recipe", ["edis_calql", "edis_iql"])
def test_every_per_task_config_is_valid(recipe):
    files = sorted((RECIPES / "configs" / recipe).glob("*.yaml"))
    assert len(files) >= 2
    for file in files:
        cfg = load_config(RECIPES / f"{recipe}.py", [f"config={file.name}"])
        if "mujoco" in file.name:  # the paper's settings
            assert cfg.edis.preset == "paper" and cfg.data.dataset_id.startswith("mujoco/")
            assert (cfg.online.steps, cfg.online.retrain_every, cfg.edis.num_samples) == (200_000, 10_000, 100_000)
            assert (cfg.edis.sampler_steps, cfg.edis.denoiser.width, cfg.edis.denoiser.blocks) == (128, 1024, 6)
        else:
            assert cfg.data.dataset_id.startswith("diffrl/")
        if "hopper" in file.name:  # the official hopper weights (w_s, w_pi, w_T) and synthetic share
            assert dict(cfg.edis.guidance) == {"state": 2.0, "policy": 0.01, "transition": 0.01}
            assert cfg.edis.synthetic_fraction == 0.2
        if recipe == "edis_calql":
            assert cfg.online.mixing_ratio == 0.0  # offline data only through the generator
