"""Bad data and bad dataset requests are refused up front with one line that says what and where (issue #13.6-9).

Each case writes a small real Minari dataset and damages it the way a disk, a converter or a user would: one NaN
reward or an infinite action written into the HDF5 file with h5py, garbled (finite but absurd) observations, an
unknown id, the dataset of another env, a read-only datasets root.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from recipe_runner import random_pendulum_dataset

from diffrl.data import load_dataset, make_dataset
from diffrl.data.paths import DatasetWriteError, dataset_dir, datasets_path_override
from diffrl.data.reading import DatasetValueError
from diffrl.data.writing import write_episodes
from diffrl.train.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _damaged(dataset_id: str, episode: int, field: str, index: tuple, value: float, num_episodes: int = 3) -> str:
    """A fresh random Pendulum dataset (200-step episodes) with ``value`` at ``episode_<episode>/field[index]``."""
    if dataset_dir(dataset_id).exists():
        shutil.rmtree(dataset_dir(dataset_id))
    random_pendulum_dataset(dataset_id, num_episodes)
    with h5py.File(dataset_dir(dataset_id) / "data" / "main_data.hdf5", "r+") as file:
        file[f"episode_{episode}/{field}"][index] = value
    return dataset_id


def test_one_nan_reward_is_refused_with_count_field_episode_and_step():
    dataset_id = _damaged("test/faults/nan-reward-v0", episode=1, field="rewards", index=(17,), value=np.nan)
    with pytest.raises(DatasetValueError) as info:
        load_dataset(dataset_id)
    message = str(info.value)
    assert "\n" not in message
    assert "reward: 1 non-finite (first at episode 1 step 17)" in message
    assert "in 1 of 3 episodes" in message and "drop_nonfinite_episodes=True" in message
    assert "observation:" not in message and "action:" not in message  # only the damaged field is named
    assert isinstance(info.value, ConfigError)  # a recipe reports it as one line, exit status 2


def test_nan_observation_is_named_in_both_observation_fields():
    # observation 5 of an episode is the observation of step 5 and the next observation of step 4
    dataset_id = _damaged("test/faults/nan-obs-v0", episode=2, field="observations", index=(5, 1), value=np.nan)
    with pytest.raises(DatasetValueError) as info:
        load_dataset(dataset_id)
    message = str(info.value)
    assert "observation: 1 non-finite (first at episode 2 step 5)" in message
    assert "next_observation: 1 non-finite (first at episode 2 step 4)" in message


def test_infinite_action_is_refused():
    dataset_id = _damaged("test/faults/inf-action-v0", episode=0, field="actions", index=(3, 0), value=-np.inf)
    with pytest.raises(DatasetValueError, match=r"action: 1 non-finite \(first at episode 0 step 3\)"):
        load_dataset(dataset_id)


def test_garbled_finite_observations_are_refused_and_the_threshold_can_be_lifted():
    dataset_id = _damaged("test/faults/huge-obs-v0", episode=0, field="observations", index=(0, 0), value=2.8e38)
    with pytest.raises(DatasetValueError) as info:
        load_dataset(dataset_id)
    message = str(info.value)
    assert "observation: 1 |x| > 1e+10 (first at episode 0 step 0)" in message
    assert "max_abs_value=None" in message
    rb = load_dataset(dataset_id, max_abs_value=None)  # the user says the values are real
    assert len(rb) == 600 and float(rb.transitions["observation"].max()) == pytest.approx(2.8e38, rel=1e-6)
    assert len(load_dataset(dataset_id, max_abs_value=1e39)) == 600  # or a larger bound


def test_drop_option_removes_exactly_the_damaged_episodes_and_warns():
    dataset_id = _damaged("test/faults/drop-v0", episode=1, field="rewards", index=(0,), value=np.inf)
    with pytest.warns(UserWarning, match=r"dropped 1 of 3 episodes \(200 steps\)"):
        rb = load_dataset(dataset_id, drop_nonfinite_episodes=True, gamma=0.9)
    assert len(rb) == 400
    assert rb.episode_lengths.tolist() == [200, 200]
    assert sorted(set(rb.transitions["episode"].tolist())) == [0, 1]
    assert bool(rb.transitions["next", "reward"].isfinite().all())
    assert bool(rb.transitions["mc_return"].isfinite().all())
    assert np.isfinite(rb.episode_returns).all()


def test_drop_option_refuses_when_every_episode_is_damaged():
    dataset_id = _damaged("test/faults/all-bad-v0", 0, "rewards", (0,), np.nan, num_episodes=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DatasetValueError, match="every episode"):
            load_dataset(dataset_id, drop_nonfinite_episodes=True)


def _recipe_error(recipe: str, args: list[str], capsys) -> tuple[int, str]:
    """Run ``recipes/<recipe>.py`` in this process as its ``__main__`` does (run_recipe), return (exit code, stderr)."""
    import importlib.util

    import torch

    from diffrl.train.config import run_recipe

    path = ROOT / "recipes" / f"{recipe}.py"
    spec = importlib.util.spec_from_file_location(f"recipe_{recipe}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        run_recipe(module.main, path, args)
    except SystemExit as exit:
        return exit.code, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)  # recipes set their own thread count
    return 0, capsys.readouterr().err


def test_recipes_refuse_bad_data_requests_with_one_line_and_exit_2(tmp_path, capsys):
    """Unknown dataset id, env/dataset mismatch, unknown loss option, NaN data: one `error:` line, status 2."""
    good = "test/faults/recipe-v0"
    if not dataset_dir(good).exists():
        random_pendulum_dataset(good, 1)
    nan = _damaged("test/faults/recipe-nan-v0", 0, "rewards", (3,), np.nan, num_episodes=1)
    cases = {
        "unknown": (
            ["iql", "data.dataset_id=nobody/pendulum/nothing-v0"],
            "error: dataset 'nobody/pendulum/nothing-v0' was not found; tried: local Minari datasets",
        ),
        "mismatch": (
            ["calql", f"data.dataset_id={good}", "env.name=Hopper-v5"],
            f"error: env 'Hopper-v5' (observation (11,), action (3,)) does not match dataset '{good}' "
            "(observation (3,), action (1,))",
        ),
        "option": (
            ["calql", f"data.dataset_id={good}", "+loss.foo=1"],
            "error: loss 'cal_ql' has no option 'foo'; accepted options: num_qvalue_nets,",
        ),
        "nan": (
            ["iql", f"data.dataset_id={nan}"],
            f"error: dataset '{nan}' holds bad values: reward: 1 non-finite (first at episode 0 step 3)",
        ),
    }
    for key, ((recipe, *args), expected) in cases.items():
        code, stderr = _recipe_error(recipe, [*args, f"logger.dir={tmp_path / key}"], capsys)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2, f"{key}: exit {code}, stderr: {stderr[-2000:]}"
        assert len(lines) == 1 and lines[0].startswith(expected), f"{key}: {stderr[-2000:]}"


def _tiny_episode():
    from minari.data_collector.episode_buffer import EpisodeBuffer

    return EpisodeBuffer(
        observations=np.zeros((3, 1), np.float32),
        actions=np.zeros((2, 1), np.float32),
        rewards=np.array([1.0, 2.0]),
        terminations=np.array([False, True]),
        truncations=np.array([False, False]),
    )


def test_read_only_datasets_root_is_one_line_naming_the_directory_and_the_fix(tmp_path):
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("chmod 0o555 does not stop this user (root) from writing")
        with datasets_path_override(root):
            with pytest.raises(DatasetWriteError) as info:
                make_dataset("Pendulum-v1", "random", "test/faults/read-only-v0", num_steps=10)
    finally:
        root.chmod(0o755)
    message = str(info.value)
    assert message.startswith(f"cannot write datasets in {root} (no write permission). Fix: point MINARI_DATASETS_PATH")
    assert isinstance(info.value, ConfigError)


def test_failed_dataset_write_names_the_directory_and_leaves_nothing(tmp_path, monkeypatch):
    """Also where chmod does not bite (root): the OS refuses the staging directory, as a read-only mount would."""
    import pathlib

    root = tmp_path / "refusing"
    root.mkdir()
    real_mkdir = pathlib.Path.mkdir

    def refusing_mkdir(self, *args, **kwargs):
        if root in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refusing_mkdir)
    space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    with datasets_path_override(root):
        with pytest.raises(DatasetWriteError) as info:
            write_episodes("test/faults/refused-v0", [_tiny_episode()], observation_space=space, action_space=space)
    assert str(info.value).startswith(f"cannot write datasets in {root} (PermissionError: Permission denied). Fix:")
    assert "MINARI_DATASETS_PATH" in str(info.value) and "\n" not in str(info.value)
    assert list(root.iterdir()) == []
    # make_dataset checks before collecting anything
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with datasets_path_override(root), pytest.raises(DatasetWriteError, match="no write permission"):
        make_dataset(
            "Pendulum-v1", lambda obs: pytest.fail("collected before checking"), "test/faults/x-v0", num_steps=5
        )


def test_datasets_root_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    with datasets_path_override(tmp_path / "a-file" / "datasets"), pytest.raises(DatasetWriteError) as info:
        load_dataset("test/faults/anything-v0")
    assert str(info.value).startswith(f"cannot create the datasets directory {tmp_path / 'a-file' / 'datasets'} (")
    assert "MINARI_DATASETS_PATH" in str(info.value)
