"""The SAC dataset generator: SAC as tuned for MuJoCo, the medium-band stopping rule, determinism given the seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffrl.data import sac_generator
from diffrl.data.paths import datasets_path_override

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sac_uses_l2_critic_loss_separate_optimizers_and_a_small_initial_std():
    torch.manual_seed(0)
    env = gym.make("Hopper-v5")
    actor, loss, updater, optimizers = sac_generator.make_sac(env)
    assert loss.loss_function == "l2"
    assert float(loss.target_entropy) == -3.0  # -dim(A)
    assert updater.eps == pytest.approx(1 - 0.005)  # SoftUpdate keeps 1 - tau
    assert {k: opt.param_groups[0]["lr"] for k, opt in optimizers.items()} == {
        "actor": 3e-4,
        "critic": 1e-3,
        "alpha": 1e-3,
    }
    ids = {k: {id(p) for group in opt.param_groups for p in group["params"]} for k, opt in optimizers.items()}
    assert ids["actor"] == {id(p) for p in loss.actor_network_params.flatten_keys().values()}
    assert ids["critic"] == {id(p) for p in loss.qvalue_network_params.flatten_keys().values()}
    assert ids["alpha"] == {id(loss.log_alpha)}
    assert not (ids["actor"] & ids["critic"])
    # the actor module acts with the parameters the actor optimizer updates
    assert {id(p) for p in actor.parameters()} <= ids["actor"]
    from tensordict import TensorDict

    obs = torch.as_tensor(np.stack([env.reset(seed=i)[0] for i in range(32)]), dtype=torch.float32)
    with torch.no_grad():
        scale = actor(TensorDict({"observation": obs}, batch_size=[32]))["scale"]
    assert 0.15 < float(scale.mean()) < 0.35  # pre-tanh std near exp(-1.5) ~ 0.22, not TorchRL's default ~1


def test_band_stop_rule_normalises_with_the_reference_scores():
    rule = sac_generator.band_stop_rule((30.0, 60.0), -20.272305, 3234.3)
    assert rule(900.0)[0] is False and rule(1500.0)[0] is True and rule(2200.0)[0] is False
    assert sac_generator.band_stop_rule((30.0, 60.0), None, None)(1e9) == (False, 0.0)
    with pytest.raises(ValueError, match="low < high"):
        sac_generator.band_stop_rule((60.0, 30.0), 0.0, 1.0)


def _run_with_stub(returns_by_eval, train_steps=400):
    """Tiny SAC on Pendulum whose evaluations report the scripted ``returns_by_eval`` (normalised = return here)."""
    env = gym.make("Pendulum-v1")
    calls = []

    def evaluate(actor):  # an entry is one return for both modes, or a (stochastic, deterministic) pair
        calls.append(1)
        entry = returns_by_eval[len(calls) - 1]
        stochastic, deterministic = entry if isinstance(entry, tuple) else (entry, entry)
        return {"return_stochastic": stochastic, "return_deterministic": deterministic}

    rule = sac_generator.band_stop_rule((30.0, 60.0), 0.0, 100.0)
    options = {"hidden_sizes": (8,)}
    return sac_generator._train_sac(env, train_steps, 100, 8, options, 0, False, evaluate, rule, 50, None)


def test_training_stops_at_the_first_evaluation_inside_the_band():
    actor, episodes, history, stop_step = _run_with_stub([5.0, 20.0, 45.0, 50.0, 55.0, 58.0])
    assert stop_step == 250  # evaluations at 150, 200, 250: the third is the first inside [30, 60]
    assert [r["step"] for r in history] == [150, 200, 250]
    assert sum(len(e.rewards) for e in episodes) == 250  # the replay is the run up to the stop
    assert [len(e.rewards) for e in episodes] == [200, 50] and episodes[-1].truncations[-1]


def test_a_lucky_stochastic_evaluation_alone_does_not_stop_training():
    # step 150: stochastic 40 in the band but deterministic 12 (Walker2d's 60k-step evaluation): go on; step 200: both
    actor, episodes, history, stop_step = _run_with_stub([(40.0, 12.0), (45.0, 38.0), 50.0])
    assert stop_step == 200 and [r["step"] for r in history] == [150, 200]
    assert history[0]["band_distance"] == pytest.approx(18.0)  # the deterministic one's distance to 30


def test_at_the_cap_the_snapshot_closest_to_the_band_is_used_and_the_replay_cut_there():
    # never inside the band: 29 (at step 200) is the closest; the run goes on to the 400-step cap
    actor, episodes, history, stop_step = _run_with_stub([5.0, 29.0, 70.0, 80.0, 90.0, 95.0])
    assert [r["step"] for r in history] == [150, 200, 250, 300, 350, 400]
    assert stop_step == 200
    assert [len(e.rewards) for e in episodes] == [200] and not episodes[0].terminations[-1]
    assert history[1]["band_distance"] == pytest.approx(1.0)


def _build(tmp_path, name, seed):
    with datasets_path_override(str(tmp_path / name)):
        out = sac_generator.build_sac_datasets(
            "Pendulum-v1",
            "test/sac-det",
            train_steps=300,
            warmup_steps=200,
            medium_steps=150,
            eval_every=100,
            eval_episodes=1,
            batch_size=16,
            hidden_sizes=(16,),
            seed=seed,
            progress=False,
        )
        return {
            kind: [(e.observations.copy(), e.actions.copy(), e.rewards.copy()) for e in ds.iterate_episodes()]
            for kind, ds in out.items()
        }


def _same(a, b):
    return len(a) == len(b) and all(all(np.array_equal(x, y) for x, y in zip(ea, eb)) for ea, eb in zip(a, b))


def test_build_is_deterministic_given_its_seed(tmp_path):
    first, second, other = _build(tmp_path, "a", 3), _build(tmp_path, "b", 3), _build(tmp_path, "c", 4)
    for kind in ("medium", "medium-replay"):
        assert _same(first[kind], second[kind]), kind
        assert not _same(first[kind], other[kind]), kind
    # the learned policy (not only the warm-up) is reproduced: replay steps 200..300 come from it
    assert sum(len(e[2]) for e in first["medium-replay"]) == 300


@pytest.mark.slow
def test_hopper_medium_at_the_real_budget_is_medium(tmp_path):
    ref_min, ref_max = sac_generator.D4RL_REFERENCE_SCORES["Hopper"]
    assert (ref_min, ref_max) == (-20.272305, 3234.3)
    with datasets_path_override(str(tmp_path)):
        out = sac_generator.build_sac_datasets("Hopper-v5", "test/hopper", seed=0, progress=False)
        scores = 100.0 * (sac_generator.complete_episode_returns(out["medium"]) - ref_min) / (ref_max - ref_min)
    assert 30.0 <= float(np.mean(scores)) <= 60.0


def test_sac_settings_reach_make_sac_and_a_misspelt_one_fails_before_anything_is_built(tmp_path, monkeypatch):
    seen = []

    def stop_after_make_sac(env, train_steps, warmup_steps, batch_size, sac_options, *rest):
        seen.append(sac_generator.make_sac(env, **sac_options)[1])
        raise RuntimeError("stop")

    monkeypatch.setattr(sac_generator, "_train_sac", stop_after_make_sac)
    with datasets_path_override(str(tmp_path)):
        with pytest.raises(RuntimeError, match="stop"):
            sac_generator.build_sac_datasets("Pendulum-v1", "test/opts", hidden_sizes=(7,), gamma=0.5, tau=0.25)
        loss = seen[0]
        assert float(loss.value_estimator.gamma) == 0.5  # hidden 7, Pendulum's 3 + 1 inputs, 2 critics
        assert loss.qvalue_network_params["module", "0", "weight"].shape == (2, 7, 4)
        with pytest.raises(TypeError, match="hiden_sizes.*'hidden_sizes'"):
            sac_generator.build_sac_datasets("Pendulum-v1", "test/opts", hiden_sizes=(7,))
        assert len(seen) == 1 and not list(tmp_path.iterdir())


def _episode(rewards, terminated):
    n = len(rewards)
    ends = np.zeros(n, dtype=bool)
    if terminated:
        ends[-1] = True
    from minari.data_collector.episode_buffer import EpisodeBuffer

    return EpisodeBuffer(
        observations=np.zeros((n + 1, 1), np.float32),
        actions=np.zeros((n, 1), np.float32),
        rewards=np.asarray(rewards, dtype=np.float64),
        terminations=ends,
        truncations=~ends & (np.arange(n) == n - 1),
    )


def test_complete_episode_returns_keeps_terminated_and_full_length_episodes_only(tmp_path):
    from diffrl.data.writing import write_episodes

    space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    spec = gym.spec("Pendulum-v1")  # max_episode_steps 200
    episodes = [_episode([1.0, 2.0], True), _episode([0.5] * 200, False), _episode([9.0] * 3, False)]
    with datasets_path_override(str(tmp_path)):
        ds = write_episodes("test/complete-v0", episodes, observation_space=space, action_space=space, env_spec=spec)
        no_spec = write_episodes("test/nospec-v0", episodes, observation_space=space, action_space=space)
    np.testing.assert_array_equal(sac_generator.complete_episode_returns(ds), [3.0, 100.0])
    np.testing.assert_array_equal(sac_generator.complete_episode_returns(ds, time_limit=3), [3.0, 100.0, 27.0])
    with pytest.raises(ValueError, match="pass time_limit"):
        sac_generator.complete_episode_returns(no_spec)
