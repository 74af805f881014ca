"""The env factory: dtype, episode limits, normalisation and reward transform from a dataset, size checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchrl.envs.utils import step_mdp

from diffrl.data import load_dataset, make_dataset
from diffrl.envs import EnvConfigError, make_env, make_parallel_env
from diffrl.train.config import ConfigError


@pytest.fixture(scope="module")
def pendulum_data(minari_tmp_path):
    make_dataset("Pendulum-v1", "random", "test-envs/pendulum/random-v0", num_steps=400, seed=0)
    return "test-envs/pendulum/random-v0"


def _actions(n):
    return torch.linspace(-2, 2, n).unsqueeze(-1)


def _rollout(env, actions, seed=0):
    """Step ``env`` through fixed actions (so two envs can be compared step by step); returns the stacked steps."""
    env.set_seed(seed)
    td = env.reset()
    steps = []
    for action in actions:
        td["action"] = action
        td = env.step(td)
        steps.append(td.select("next").clone())
        td = step_mdp(td)
    return torch.stack(steps)


def test_float32_step_counter_and_episode_limit():
    env = make_env("Hopper-v5", seed=0, max_episode_steps=7)  # MuJoCo observations are float64 underneath
    td = env.rollout(20, break_when_any_done=True, auto_cast_to_device=True)
    assert td["observation"].dtype == torch.float32 and td["next", "reward"].dtype == torch.float32
    if not td["next", "terminated"].any():  # the hopper may fall first; otherwise the time limit ends it
        assert td.batch_size == torch.Size([7]) and td["next", "truncated"][-1].item()
    assert td["next", "step_count"].squeeze(-1).tolist() == list(range(1, td.batch_size[0] + 1))


def test_observation_normalisation_and_reward_transform_follow_the_dataset(pendulum_data):
    rb = load_dataset(pendulum_data, normalize_obs=True, reward_scale=0.5, reward_bias=1.0)
    raw_env = make_env("Pendulum-v1")
    env = make_env(from_dataset=rb, keep_raw_reward=True)  # env name taken from the dataset
    raw, out = _rollout(raw_env, _actions(6)), _rollout(env, _actions(6))
    expected_obs = (raw["next", "observation"] - rb.obs_mean) / rb.obs_std
    assert torch.allclose(out["next", "observation"], expected_obs, atol=1e-5)
    assert torch.allclose(out["next", "reward"], 0.5 * raw["next", "reward"] + 1.0, atol=1e-5)
    assert torch.allclose(out["next", "raw_reward"], raw["next", "reward"])


def test_dataset_without_normalised_observations_leaves_them_raw(pendulum_data):
    rb = load_dataset(pendulum_data)
    raw, out = _rollout(make_env("Pendulum-v1"), _actions(3)), _rollout(make_env(from_dataset=rb), _actions(3))
    assert torch.equal(out["next", "observation"], raw["next", "observation"])
    assert torch.equal(out["next", "reward"], raw["next", "reward"])


def test_explicit_statistics_and_reward_options_win():
    mean, std = torch.tensor([0.5, 0.0, 1.0]), torch.tensor([2.0, 1.0, 4.0])
    raw = _rollout(make_env("Pendulum-v1"), _actions(3))
    out = _rollout(make_env("Pendulum-v1", obs_mean=mean, obs_std=std, reward_scale=3.0), _actions(3))
    assert torch.allclose(out["next", "observation"], (raw["next", "observation"] - mean) / std, atol=1e-6)
    assert torch.allclose(out["next", "reward"], 3.0 * raw["next", "reward"])
    evaluation = _rollout(make_env("Pendulum-v1", reward_scale=3.0, transform_reward=False), _actions(3))
    assert torch.equal(evaluation["next", "reward"], raw["next", "reward"])


def test_dataset_observation_size_must_match_the_env(pendulum_data):
    rb = load_dataset(pendulum_data)
    with pytest.raises(EnvConfigError) as info:
        make_env("Hopper-v5", from_dataset=rb)
    assert str(info.value).startswith(
        "env 'Hopper-v5' (observation (11,), action (3,)) does not match dataset 'test-envs/pendulum/random-v0' "
        "(observation (3,), action (1,)), collected in 'Pendulum-v1'. Fix: use the dataset's env"
    )
    assert isinstance(info.value, ConfigError)  # recipes print it as one line and exit 2


def test_dataset_action_size_must_match_the_env():
    fake = SimpleNamespace(obs_dim=3, action_dim=2, dataset_id="fake/two-actions-v0", env_id="Fake-v0")
    with pytest.raises(EnvConfigError, match=r"action \(1,\)\) does not match .*\(observation \(3,\), action \(2,\)\)"):
        make_env("Pendulum-v1", from_dataset=fake)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="pass both obs_mean and obs_std"):
        make_env("Pendulum-v1", obs_mean=torch.zeros(3))
    with pytest.raises(ValueError, match="needs an env name"):
        make_env()
    with pytest.raises(ValueError, match="cannot make gymnasium env 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="obs_mean/obs_std have 2/2 entries but env 'Pendulum-v1' observes size 3"):
        make_env("Pendulum-v1", obs_mean=torch.zeros(2), obs_std=torch.ones(2))


def test_seeded_envs_repeat():
    first = make_env("Pendulum-v1", seed=3).rollout(5)
    second = make_env("Pendulum-v1", seed=3).rollout(5)
    assert torch.equal(first["observation"][0], second["observation"][0])


@pytest.mark.slow
def test_parallel_env_batches_workers_and_applies_transforms():
    env = make_parallel_env("Pendulum-v1", 2, seed=0, max_episode_steps=4, reward_scale=2.0, keep_raw_reward=True)
    try:
        td = env.rollout(4)
    finally:
        env.close()
    assert td.batch_size == torch.Size([2, 4])
    assert torch.allclose(td["next", "reward"], 2.0 * td["next", "raw_reward"])
    assert td["next", "truncated"][:, -1].all()
