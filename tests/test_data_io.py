"""Minari in and out: make -> load round trips, buffer contents and options, bad inputs, atomic builds."""

from __future__ import annotations

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
from minari.data_collector.episode_buffer import EpisodeBuffer

from diffrl.data import DatasetCorruptedError, DatasetNotFoundError, load_dataset, make_dataset
from diffrl.data.paths import dataset_dir, local_dataset_ids
from diffrl.data.reading import CACHE_DIR
from diffrl.data.writing import STAGING_DIR, write_episodes
from diffrl.train.config import ConfigError

OBS_SPACE = gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)


def _episodes(lengths, ends, seed=0):
    """Synthetic episodes with random float32 data; ``ends`` says how each ends: 'term', 'trunc' or 'cut'."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i, (length, end) in enumerate(zip(lengths, ends)):
        terminations = np.zeros(length, dtype=bool)
        truncations = np.zeros(length, dtype=bool)
        terminations[-1] = end == "term"
        truncations[-1] = end == "trunc"
        episodes.append(
            EpisodeBuffer(
                id=i,
                observations=rng.uniform(-5, 5, size=(length + 1, 3)).astype(np.float32),
                actions=rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
                rewards=rng.normal(size=length),
                terminations=terminations,
                truncations=truncations,
            )
        )
    return episodes


def _write(dataset_id, episodes, **kwargs):
    kwargs.setdefault("observation_space", OBS_SPACE)
    kwargs.setdefault("action_space", ACT_SPACE)
    return write_episodes(dataset_id, episodes, **kwargs)


@pytest.fixture(scope="module")
def synthetic():
    """A written synthetic dataset (3 episodes: terminated, truncated, cut) and the episodes written."""
    episodes = _episodes([4, 3, 5], ["term", "trunc", "cut"])
    _write("test/synthetic/mixed-v0", episodes, ref_min_score=-10.0, ref_max_score=10.0, description="synthetic")
    return "test/synthetic/mixed-v0", episodes


def test_round_trip_returns_exactly_what_was_written(synthetic):
    dataset_id, episodes = synthetic
    rb = load_dataset(dataset_id, batch_size=5)
    data = rb.transitions
    assert len(rb) == 12
    cat = np.concatenate
    np.testing.assert_array_equal(data["observation"].numpy(), cat([e.observations[:-1] for e in episodes]))
    np.testing.assert_array_equal(data["next", "observation"].numpy(), cat([e.observations[1:] for e in episodes]))
    np.testing.assert_array_equal(data["action"].numpy(), cat([e.actions for e in episodes]))
    rewards = cat([e.rewards for e in episodes]).astype(np.float32)[:, None]
    np.testing.assert_array_equal(data["next", "reward"].numpy(), rewards)
    terminated = cat([e.terminations for e in episodes])[:, None]
    truncated = cat([e.truncations for e in episodes])[:, None]
    np.testing.assert_array_equal(data["next", "terminated"].numpy(), terminated)
    np.testing.assert_array_equal(data["next", "truncated"].numpy(), truncated)
    np.testing.assert_array_equal(data["next", "done"].numpy(), terminated | truncated)
    assert data["episode"].tolist() == [0] * 4 + [1] * 3 + [2] * 5
    for key in ("observation", "action", ("next", "reward"), "mc_return"):
        assert data[key].dtype == torch.float32
    assert data["next", "reward"].shape == (12, 1) and data["mc_return"].shape == (12, 1)


def test_buffer_carries_statistics_reference_scores_and_metadata(synthetic):
    dataset_id, episodes = synthetic
    rb = load_dataset(dataset_id, obs_std_eps=1e-3)
    obs = np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float64)
    np.testing.assert_allclose(rb.obs_mean.numpy(), obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rb.obs_std.numpy(), obs.std(0) + 1e-3, rtol=1e-5)
    assert (rb.ref_min_score, rb.ref_max_score) == (-10.0, 10.0)
    assert rb.normalized_score(0.0) == pytest.approx(50.0)
    assert torch.allclose(rb.normalized_score(torch.tensor([-10.0, 10.0])), torch.tensor([0.0, 100.0]))
    assert rb.dataset_id == dataset_id and rb.metadata["description"] == "synthetic"
    np.testing.assert_allclose(rb.episode_returns, [e.rewards.sum() for e in episodes])
    assert rb.episode_lengths.tolist() == [4, 3, 5]
    assert "OfflineReplayBuffer" in repr(rb) and dataset_id in repr(rb)


def test_mc_return_of_loaded_dataset_matches_hand_computation(synthetic):
    dataset_id, episodes = synthetic
    gamma = 0.8
    rb = load_dataset(dataset_id, gamma=gamma, reward_scale=2.0, reward_bias=0.5)
    expected = []
    for e in episodes:  # transformed rewards, discounted within each episode, nothing after its last step
        r = 2.0 * e.rewards + 0.5
        expected.extend(sum(gamma**k * x for k, x in enumerate(r[t:])) for t in range(len(r)))
    np.testing.assert_allclose(rb.transitions["mc_return"].squeeze(-1).numpy(), expected, rtol=1e-5, atol=1e-5)
    rewards = np.concatenate([e.rewards for e in episodes])
    np.testing.assert_allclose(rb.transitions["next", "reward"].squeeze(-1).numpy(), 2 * rewards + 0.5, rtol=1e-6)
    assert (rb.reward_transform.scale, rb.reward_transform.bias, rb.gamma) == (2.0, 0.5, gamma)


def test_sparse_reward_rule_through_load_dataset():
    # AntMaze-like raw rewards: 1 at the goal, 0 otherwise; reward transform r * 10 - 5 as in CORL.
    episodes = _episodes([3, 4], ["term", "trunc"], seed=1)
    episodes[0].rewards[:] = [0.0, 0.0, 1.0]  # reaches the goal on its last step
    episodes[1].rewards[:] = 0.0  # never succeeds
    _write("test/sparse/maze-v0", episodes)
    gamma = 0.99
    rb = load_dataset("test/sparse/maze-v0", gamma=gamma, sparse_reward=True, reward_scale=10.0, reward_bias=-5.0)
    mc = rb.transitions["mc_return"].squeeze(-1).numpy()
    np.testing.assert_allclose(mc[:3], [-5 + 0.99 * -5 + 0.99**2 * 5, -5 + 0.99 * 5, 5.0], rtol=1e-5)
    np.testing.assert_allclose(mc[3:], [-5.0 / (1 - gamma)] * 4, rtol=1e-5)
    dense = load_dataset("test/sparse/maze-v0", gamma=gamma, reward_scale=10.0, reward_bias=-5.0)
    assert dense.transitions["mc_return"][-1].item() == pytest.approx(-5.0)


def test_reward_range_normalisation_and_observation_normalisation(synthetic):
    dataset_id, episodes = synthetic
    returns = np.array([e.rewards.sum() for e in episodes])
    rb = load_dataset(dataset_id, normalize_reward=True, normalize_obs=True)
    scale = 1000.0 / (returns.max() - returns.min())
    rewards = np.concatenate([e.rewards for e in episodes])
    np.testing.assert_allclose(rb.transitions["next", "reward"].squeeze(-1).numpy(), rewards * scale, rtol=1e-5)
    assert rb.reward_transform.scale == pytest.approx(scale)
    obs = rb.transitions["observation"]
    assert rb.observation_normalized
    assert torch.allclose(obs.mean(0), torch.zeros(3), atol=1e-5)
    raw = torch.from_numpy(np.concatenate([e.observations[1:] for e in episodes]))
    assert torch.allclose(rb.transitions["next", "observation"], (raw - rb.obs_mean) / rb.obs_std, atol=1e-5)


def test_batch_size_seed_and_device_options(synthetic):
    dataset_id, _ = synthetic
    first = load_dataset(dataset_id, batch_size=7, seed=3, device="cpu")
    second = load_dataset(dataset_id, batch_size=7, seed=3, device="cpu")
    batch = first.sample()
    assert batch.batch_size == torch.Size([7]) and batch.device == torch.device("cpu")
    assert torch.equal(batch["index"], second.sample()["index"])
    assert first.transitions.device == torch.device("cpu")


def test_make_dataset_writes_a_minari_dataset_with_metadata():
    calls = []

    def policy(obs):
        calls.append(obs)
        return -0.5 * obs[2:3]

    ds = make_dataset(
        "Pendulum-v1",
        policy,
        "test/pendulum/damped-v0",
        num_steps=450,
        seed=5,
        ref_min_score=-1200.0,
        ref_max_score=-150.0,
        algorithm_name="damping",
        description="a damping controller",
    )
    assert (ds.total_steps, ds.total_episodes, len(calls)) == (450, 3, 450)
    assert "test/pendulum/damped-v0" in minari.list_local_datasets()
    reloaded = minari.load_dataset("test/pendulum/damped-v0")
    meta = reloaded.storage.metadata
    assert meta["algorithm_name"] == "damping" and meta["description"] == "a damping controller"
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-1200.0, -150.0) and meta["author"] == {"diffrl"}
    assert reloaded.env_spec.id == "Pendulum-v1"
    episodes = list(reloaded.iterate_episodes())
    assert [len(e.rewards) for e in episodes] == [200, 200, 50]
    assert episodes[0].truncations[-1] and episodes[2].truncations[-1] and not episodes[2].terminations.any()
    # the recorded actions are the policy's, and the loaded buffer holds exactly the stored episodes
    np.testing.assert_allclose(episodes[0].actions[:, 0], -0.5 * episodes[0].observations[:-1, 2], rtol=1e-6)
    rb = load_dataset("test/pendulum/damped-v0")
    np.testing.assert_array_equal(
        rb.transitions["next", "reward"].squeeze(-1).numpy(),
        np.concatenate([e.rewards for e in episodes]).astype(np.float32),
    )
    assert rb.env_id == "Pendulum-v1"


def test_make_dataset_passes_write_episodes_metadata_on_and_rejects_unknown_keywords_before_rolling_out():
    ds = make_dataset(
        "Pendulum-v1",
        "random",
        "test/pendulum/meta-v0",
        num_steps=5,
        author="someone",
        author_email="a@b.c",
        code_permalink="https://example.org/code",
        requirements=["gymnasium"],
        extra_metadata={"note": "kept"},
    )
    meta = ds.storage.metadata
    assert (meta["author"], meta["author_email"], meta["code_permalink"]) == (
        {"someone"},
        {"a@b.c"},
        "https://example.org/code",
    )
    assert (meta["requirements"], meta["note"], meta["algorithm_name"]) == (["gymnasium"], "kept", "random")
    calls = []
    for bad in ({"ref_min": 0.0}, {"observation_space": ACT_SPACE}):
        with pytest.raises(TypeError, match=f"unexpected keyword.*{next(iter(bad))}.*ref_min_score"):
            make_dataset("Pendulum-v1", lambda obs: calls.append(obs), "test/pendulum/typo-v0", num_steps=5, **bad)
    assert calls == [] and "test/pendulum/typo-v0" not in local_dataset_ids()


def test_make_dataset_accepts_torchrl_modules():
    from tensordict.nn import TensorDictModule

    module = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["observation"], out_keys=["action"])
    ds = make_dataset("Pendulum-v1", module, "test/pendulum/linear-v0", num_episodes=1, seed=0)
    episode = next(iter(ds.iterate_episodes()))
    with torch.no_grad():
        expected = module.module(torch.as_tensor(episode.observations[:-1])).clamp(-2, 2).numpy()
    np.testing.assert_allclose(episode.actions, expected, rtol=1e-5, atol=1e-6)


def test_existing_dataset_is_not_overwritten_silently(synthetic):
    dataset_id, episodes = synthetic
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _write(dataset_id, episodes[:1])
    _write("test/synthetic/replace-v0", episodes)
    _write("test/synthetic/replace-v0", episodes[:1], overwrite=True)
    assert len(load_dataset("test/synthetic/replace-v0")) == 4


def test_unknown_dataset_lists_sources_tried_and_local_datasets(synthetic):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("nobody/unknown/thing-v0")
    message = str(info.value)
    assert "\n" not in message  # one line: a recipe prints it as is
    assert "'nobody/unknown/thing-v0' was not found" in message
    assert "local Minari datasets (no directory" in message
    assert "registered generators (none named 'nobody/unknown/thing-v0')" in message
    assert "diffrl/pendulum/medium-v0" in message  # the registered names are listed
    assert "minari.download_dataset" in message
    assert synthetic[0] in message  # the local datasets are listed
    assert "MINARI_DATASETS_PATH" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ConfigError)  # exit 2 in recipes
    with pytest.raises(DatasetNotFoundError, match="skipped: download=False"):
        load_dataset("nobody/unknown/thing-v0", download=False, build=False)


def test_suggestions_name_each_dataset_once(synthetic):
    """A built generator's id is local and registered at once; the suggestion names it once."""
    from diffrl import registry

    registry.register("dataset", synthetic[0], lambda **options: None)
    try:
        with pytest.raises(DatasetNotFoundError) as info:
            load_dataset("test/synthetic/mixd-v0", build=False, download=False)
    finally:
        registry.unregister("dataset", synthetic[0])
    assert str(info.value).count(f"'{synthetic[0]}'") == 1
    assert f"Did you mean '{synthetic[0]}'" in str(info.value)


def test_close_ids_are_suggested_and_malformed_ids_rejected():
    with pytest.raises(DatasetNotFoundError, match="Did you mean 'diffrl/pendulum/medium-v0'"):
        load_dataset("diffrl/pendulum/meduim-v0", build=False, download=False)
    with pytest.raises(ValueError, match="invalid dataset id 'diffrl/pendulum'.*ending in -v<version>"):
        load_dataset("diffrl/pendulum")


def test_corrupted_hdf5_file_gives_a_clear_error():
    _write("test/broken/garbage-v0", _episodes([3], ["term"]))
    (dataset_dir("test/broken/garbage-v0") / "data" / "main_data.hdf5").write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(DatasetCorruptedError, match="unreadable or partially written.*delete test/broken/garbage-v0"):
        load_dataset("test/broken/garbage-v0")


def test_truncated_hdf5_file_gives_a_clear_error():
    _write("test/broken/truncated-v0", _episodes([50, 50], ["term", "term"]))
    path = dataset_dir("test/broken/truncated-v0") / "data" / "main_data.hdf5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetCorruptedError, match="test/broken/truncated-v0"):
        load_dataset("test/broken/truncated-v0")


def test_metadata_disagreeing_with_the_data_gives_a_clear_error():
    _write("test/broken/counts-v0", _episodes([3, 3], ["term", "term"]))
    meta_path = dataset_dir("test/broken/counts-v0") / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["total_steps"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetCorruptedError, match="records 2 episodes / 99 steps but the file holds 2 episodes / 6"):
        load_dataset("test/broken/counts-v0")


def test_dataset_directory_without_data_is_reported_as_partial():
    dataset_dir("test/broken/empty-v0").mkdir(parents=True)
    with pytest.raises(DatasetCorruptedError, match="no 'data' subdirectory"):
        load_dataset("test/broken/empty-v0")


def _no_trace_of(dataset_id):
    staging = dataset_dir("") / STAGING_DIR
    leftovers = list(staging.iterdir()) if staging.exists() else []
    return not dataset_dir(dataset_id).exists() and dataset_id not in local_dataset_ids() and not leftovers


@pytest.mark.parametrize("error", [RuntimeError("policy crashed"), KeyboardInterrupt()])
def test_exception_in_the_policy_leaves_no_dataset(error):
    steps = []

    def policy(obs):
        steps.append(1)
        if len(steps) == 150:
            raise error
        return np.zeros(1)

    with pytest.raises(type(error)):
        make_dataset("Pendulum-v1", policy, "test/crash/policy-v0", num_steps=300)
    assert len(steps) == 150
    assert _no_trace_of("test/crash/policy-v0")


def test_exception_while_writing_leaves_no_half_written_dataset(monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    original = HDF5Storage.update_episodes

    def write_some_then_fail(self, episodes):
        original(self, list(episodes)[:1])  # one episode reaches the disk, then the write is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(HDF5Storage, "update_episodes", write_some_then_fail)
    with pytest.raises(KeyboardInterrupt):
        _write("test/crash/write-v0", _episodes([3, 3], ["term", "term"]))
    assert _no_trace_of("test/crash/write-v0")


def test_invalid_ids_and_arguments_are_rejected():
    with pytest.raises(ValueError, match="invalid dataset id 'no-version'"):
        make_dataset("Pendulum-v1", "random", "no-version", num_steps=10)
    with pytest.raises(ValueError, match="exactly one of num_steps and num_episodes"):
        make_dataset("Pendulum-v1", "random", "test/args/none-v0")
    with pytest.raises(ValueError, match="ref_min_score < ref_max_score"):
        _write("test/args/refs-v0", _episodes([2], ["term"]), ref_min_score=1.0)
    with pytest.raises(TypeError, match="policy must be"):
        make_dataset("Pendulum-v1", 42, "test/args/policy-v0", num_steps=10)


def test_load_cache_is_reused_and_invalidated_when_the_file_changes():
    episodes = _episodes([30, 20], ["term", "trunc"], seed=7)
    _write("test/cache/data-v0", episodes)
    first = load_dataset("test/cache/data-v0")
    cache_file = dataset_dir("test/cache/data-v0") / CACHE_DIR / "transitions.pt"
    assert cache_file.is_file()
    second = load_dataset("test/cache/data-v0")
    assert (first.transitions == second.transitions).all()
    assert (second.transitions == load_dataset("test/cache/data-v0", cache=False).transitions).all()
    # a garbled cache is only a missed shortcut
    cache_file.write_bytes(b"garbage")
    third = load_dataset("test/cache/data-v0")
    assert torch.equal(third.transitions["action"], first.transitions["action"])
    # a damaged data file is noticed even though a valid cache exists
    path = dataset_dir("test/cache/data-v0") / "data" / "main_data.hdf5"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetCorruptedError):
        load_dataset("test/cache/data-v0")
