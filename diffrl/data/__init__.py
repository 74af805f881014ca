"""Datasets (Minari in and out, return-to-go, statistics, toy data) and data transforms (EDIS).

Main entry points:

* :func:`load_dataset` - a Minari dataset as an :class:`OfflineReplayBuffer` (local, else a registered generator,
  else a Minari download), with ``mc_return``, observation statistics, reward transform and reference scores;
* :func:`make_dataset` - any gymnasium env + any policy -> a real Minari (HDF5) dataset, written atomically;
* :func:`bandit_dataset` / :func:`bandit_replay_buffer` - the 2D bandit of the Diffusion-QL paper;
* :func:`discounted_return_to_go`, :func:`make_reward_transform`, :class:`RewardTransform` - CORL's return and reward
  processing on flat arrays;
* :func:`datasets_path_override`, :func:`local_dataset_ids` - where datasets live;
* :func:`check_dataset_values` and the errors :class:`DatasetNotFoundError`, :class:`DatasetCorruptedError`,
  :class:`DatasetValueError` (non-finite or absurd values), :class:`DatasetWriteError` (an unwritable directory).

The registered dataset generators (kind ``dataset``) live in :mod:`diffrl.data.generators`; the command line is
``python -m diffrl.data make|list|info|delete`` (or ``diffrl-data``).
"""

from diffrl.data.loading import OfflineReplayBuffer, load_dataset
from diffrl.data.paths import DatasetWriteError, datasets_path_override, datasets_root, local_dataset_ids
from diffrl.data.reading import (
    DatasetCorruptedError,
    DatasetNotFoundError,
    DatasetValueError,
    check_dataset_values,
    read_dataset,
)
from diffrl.data.returns import RewardTransform, discounted_return_to_go, episode_returns, make_reward_transform
from diffrl.data.toy import bandit_dataset, bandit_replay_buffer
from diffrl.data.writing import average_return, make_dataset, rollout_episodes, write_episodes

__all__ = [
    "DatasetCorruptedError",
    "DatasetNotFoundError",
    "DatasetValueError",
    "DatasetWriteError",
    "OfflineReplayBuffer",
    "RewardTransform",
    "average_return",
    "bandit_dataset",
    "bandit_replay_buffer",
    "check_dataset_values",
    "datasets_path_override",
    "datasets_root",
    "discounted_return_to_go",
    "episode_returns",
    "load_dataset",
    "local_dataset_ids",
    "make_dataset",
    "make_reward_transform",
    "read_dataset",
    "rollout_episodes",
    "write_episodes",
]
