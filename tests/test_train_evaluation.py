"""Evaluation on a real env against independently computed returns; seeding and device choice."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import GymEnv
from torchrl.envs.utils import ExplorationType, exploration_type, step_mdp

from diffrl.train import ConfigError, evaluate, resolve_device, rng_state, seed_everything, set_rng_state
from diffrl.train.evaluation import _episode_stats

ACTION = 0.7


def _constant(td):
    return td.set("action", torch.full((*td.batch_size, 1), ACTION))


def _manual_returns(seed: int, episodes: int, steps: int) -> list[float]:
    # Step the env by hand (no rollout, no masking) to get what evaluate must report.
    env = GymEnv("Pendulum-v1")
    env.set_seed(seed)
    returns = []
    for _ in range(episodes):
        td, total = env.reset(), 0.0
        for _ in range(steps):
            td = env.step(_constant(td))
            total += td["next", "reward"].item()
            td = step_mdp(td)
        returns.append(total)
    return returns


def test_evaluate_matches_hand_computed_returns_and_normalized_scores():
    env = GymEnv("Pendulum-v1")
    env.set_seed(5)
    out = evaluate(env, _constant, episodes=2, max_steps=15, ref_min_score=-300.0, ref_max_score=-50.0)
    expected = np.array(_manual_returns(5, episodes=2, steps=15))
    assert expected[0] != expected[1]  # two different episodes, so the std below is not trivially 0
    assert out["eval/return"] == pytest.approx(expected.mean(), abs=1e-4)
    assert out["eval/return_std"] == pytest.approx(expected.std(), abs=1e-4)
    assert out["eval/length"] == 15.0 and out["eval/episodes"] == 2.0
    scores = 100 * (expected + 300.0) / 250.0
    assert out["eval/normalized_score"] == pytest.approx(scores.mean(), abs=1e-4)
    assert out["eval/normalized_score_std"] == pytest.approx(scores.std(), abs=1e-4)
    assert out["eval/return_min"] == pytest.approx(expected.min(), abs=1e-4)  # the worst episode, not the mean
    assert out["eval/normalized_score_min"] == pytest.approx(scores.min(), abs=1e-4)
    no_ref = evaluate(env, _constant, episodes=1, max_steps=3)
    assert "eval/normalized_score" not in no_ref


def test_episode_stats_stop_each_episode_at_its_first_done():
    # Two envs in a batch, 6 steps: the first is done at t=2, the second at t=4 (then auto-reset data follows).
    done = torch.zeros(2, 6, 1, dtype=torch.bool)
    done[0, 2] = done[0, 5] = done[1, 4] = True
    reward = torch.arange(12.0).reshape(2, 6, 1)
    rollout = TensorDict({"next": {"reward": reward, "done": done}}, batch_size=[2, 6])
    returns, lengths = _episode_stats(rollout, torch.Size([2]), ("next", "reward"), ("next", "done"))
    assert returns.tolist() == [0 + 1 + 2, 6 + 7 + 8 + 9 + 10] and lengths.tolist() == [3, 5]


def test_exploration_mode_no_grad_and_train_mode_restored():
    seen = []

    class Policy(torch.nn.Module):
        def forward(self, td):
            seen.append((exploration_type(), torch.is_grad_enabled(), self.training))
            return _constant(td)

    policy = Policy().train()
    env = GymEnv("Pendulum-v1")
    evaluate(env, policy, episodes=1, max_steps=2, exploration="random")
    assert seen[0] == (ExplorationType.RANDOM, False, False)
    assert policy.training
    evaluate(env, policy, episodes=1, max_steps=2)
    assert seen[-1][0] == ExplorationType.DETERMINISTIC
    with pytest.raises(ValueError, match=r"unknown exploration 'greedy'; accepted: deterministic, random"):
        evaluate(env, policy, episodes=1, exploration="greedy")
    with pytest.raises(ValueError, match=r"give both ref_min_score and ref_max_score"):
        evaluate(env, policy, episodes=1, ref_min_score=0.0)


def test_seed_everything_and_rng_state_round_trip():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()  # noqa: NPY002 (the global one)

    seed_everything(7)
    first = draw()
    seed_everything(7)
    assert draw() == first
    state = rng_state()
    later = draw()
    set_rng_state(state)
    assert draw() == later
    with pytest.raises(ConfigError, match=r"seed must be a non-negative integer, got -1"):
        seed_everything(-1)


def test_resolve_device_is_explicit_about_what_is_missing(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(
        ConfigError,
        match=r"device=cuda:1 asked for CUDA but none is available .*"
        r"use device=cpu or device=auto",
    ):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match=r"unknown device 'gpu0'; accepted: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu0")
