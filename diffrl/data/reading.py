"""Reading a local Minari dataset into flat, float32 transitions (a TensorDict), with strict integrity checks.

diffrl reads Minari files with Minari's own storage reader instead of TorchRL's ``MinariExperienceReplay``, because:
(1) the latter copies the whole dataset into a second memory-mapped store under its own cache directory, (2) it returns
float64 rewards that would need another cast, and (3) the episode boundaries needed for returns-to-go and reward-range
normalisation come for free from Minari's episode layout. Observations of ``Dict``/``Tuple`` spaces are flattened in the
space's key order, as ``gymnasium.wrappers.FlattenObservation`` does, so the env and the data agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from diffrl.errors import ConfigError

__all__ = [
    "DatasetNotFoundError",
    "DatasetCorruptedError",
    "DatasetValueError",
    "MAX_ABS_VALUE",
    "RawDataset",
    "check_dataset_values",
    "read_dataset",
]

CACHE_DIR = ".diffrl-cache"  # inside a dataset's directory; hidden, so Minari ignores it

# Larger magnitudes are taken for garbled storage rather than data: no gymnasium task observes, acts or rewards at
# 1e10, while reinterpreted or uninitialised float bytes land there (e.g. 2.8e38).
MAX_ABS_VALUE = 1e10


# The dataset errors are ConfigErrors too: a dataset id and the data it names are user input, so a recipe
# (run_recipe) reports them as one line with exit status 2 instead of a traceback.
class DatasetNotFoundError(FileNotFoundError, LookupError, ConfigError):
    """No local dataset, no registered generator and no download could provide a dataset id."""


class DatasetCorruptedError(OSError, ConfigError):
    """A local dataset exists but cannot be read completely (corrupted, truncated or partially written)."""


class DatasetValueError(DatasetCorruptedError):
    """A dataset holds non-finite (NaN, inf) or absurdly large observations, actions or rewards."""


@dataclass
class RawDataset:
    """The transitions of a Minari dataset before any reward transform, plus what Minari knows about it.

    ``transitions`` holds "observation", "action", "episode" and ("next", "observation" / "reward" / "done" /
    "terminated" / "truncated"), float32 with rewards and flags shaped [N, 1]; ``rewards`` keeps the stored float64
    rewards for exact return computations; ``episode_lengths`` gives each episode's number of steps in storage order.
    ``env_id`` is the evaluation env's id when the dataset names one, else the collection env's.
    """

    dataset_id: str
    path: Path
    transitions: TensorDict
    rewards: np.ndarray
    episode_lengths: np.ndarray
    observation_space: gym.Space
    action_space: gym.Space
    env_spec: Any = None
    env_id: str | None = None
    metadata: dict = field(default_factory=dict)


def _flatten(space: gym.Space, data: Any, num: int) -> np.ndarray:
    """[num, ...] data of ``space`` -> [num, flat_dim] float array (Box, Dict and Tuple spaces)."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(data).reshape(num, -1)
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([_flatten(sub, data[key], num) for key, sub in space.spaces.items()], axis=-1)
    if isinstance(space, gym.spaces.Tuple):
        return np.concatenate([_flatten(sub, data[i], num) for i, sub in enumerate(space.spaces)], axis=-1)
    raise TypeError(
        f"unsupported space {space}: diffrl reads Box observations and actions (and Dict / Tuple of Box "
        "observations, flattened). Discrete or image spaces need a custom reader."
    )


def _length(space: gym.Space, data: Any) -> int:
    if isinstance(space, gym.spaces.Dict):
        return _length(next(iter(space.spaces.values())), data[next(iter(space.spaces))])
    if isinstance(space, gym.spaces.Tuple):
        return _length(space.spaces[0], data[0])
    return len(data)


def _corrupted(dataset_id: str, path: Path, reason: str) -> DatasetCorruptedError:
    return DatasetCorruptedError(
        f"local dataset {dataset_id!r} at {path} is unreadable or partially written: {reason}. "
        f"Delete it (python -m diffrl.data delete {dataset_id}) and rebuild or download it again."
    )


def _episodes_from_hdf5(dataset, dataset_id: str, path: Path) -> tuple[TensorDict, np.ndarray, np.ndarray]:
    """Every episode of a Minari dataset, concatenated: (transitions, float64 rewards, episode lengths)."""
    storage = dataset.storage
    obs_space, act_space = dataset.observation_space, dataset.action_space
    observations, next_observations, actions, rewards, terminations, truncations, lengths = ([] for _ in range(7))
    for episode in storage.get_episodes(range(dataset.total_episodes)):
        num = len(episode["rewards"])
        if num == 0 or _length(obs_space, episode["observations"]) != num + 1:
            raise ValueError(f"episode {episode['id']} has {num} rewards but inconsistent observations")
        obs = _flatten(obs_space, episode["observations"], num + 1)
        observations.append(obs[:-1])
        next_observations.append(obs[1:])
        actions.append(_flatten(act_space, episode["actions"], num))
        rewards.append(np.asarray(episode["rewards"], dtype=np.float64))
        terminations.append(np.asarray(episode["terminations"], dtype=bool))
        truncations.append(np.asarray(episode["truncations"], dtype=bool))
        lengths.append(num)
    if any(len(x) != n for arrays in (actions, terminations, truncations) for x, n in zip(arrays, lengths)):
        raise _corrupted(dataset_id, path, "actions, terminations and truncations do not match the rewards' length")
    if not lengths:
        raise _corrupted(dataset_id, path, "the file holds no episode")

    def cat(arrays: list[np.ndarray], dtype: torch.dtype, trailing: bool = False) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays))).to(dtype)
        return tensor.unsqueeze(-1) if trailing else tensor

    terminated = cat(terminations, torch.bool, True)
    truncated = cat(truncations, torch.bool, True)
    transitions = TensorDict(
        {
            "observation": cat(observations, torch.float32),
            "action": cat(actions, torch.float32),
            "episode": torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(lengths)),
            "next": {
                "observation": cat(next_observations, torch.float32),
                "reward": cat(rewards, torch.float32, True),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            },
        },
        batch_size=[int(sum(lengths))],
    )
    return transitions, np.concatenate(rewards), np.asarray(lengths, dtype=np.int64)


def _cache_key(data_path: Path) -> str:
    """Identifies the exact files read: any rewrite of the data or metadata changes a size or a modification time."""
    stats = [p.stat() for p in sorted(data_path.iterdir()) if p.is_file()]
    return ";".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)


def _load_cache(path: Path, key: str):
    file = path / CACHE_DIR / "transitions.pt"
    if not file.is_file():
        return None
    try:
        saved = torch.load(file, weights_only=True)
        if saved.get("key") != key:
            return None
        transitions = TensorDict.from_dict(saved["transitions"], batch_size=[len(saved["rewards"])])
        return transitions, saved["rewards"].numpy(), saved["lengths"].numpy()
    except Exception:  # an unreadable cache is only a missed shortcut: the HDF5 file is read instead
        return None


def _save_cache(path: Path, key: str, transitions: TensorDict, rewards: np.ndarray, lengths: np.ndarray) -> None:
    cache = path / CACHE_DIR
    tmp = cache / f"transitions.pt.{os.getpid()}.tmp"
    try:
        cache.mkdir(exist_ok=True)
        payload = {
            "key": key,
            "transitions": transitions.to_dict(),
            "rewards": torch.from_numpy(rewards),
            "lengths": torch.from_numpy(lengths),
        }
        torch.save(payload, tmp)
        os.replace(tmp, cache / "transitions.pt")  # atomic: readers see the old cache or the new one
    except OSError as err:  # e.g. a read-only dataset directory; loading still works, only slower next time
        warnings.warn(f"could not write the load cache of {path}: {err}", stacklevel=3)
        tmp.unlink(missing_ok=True)


def _bad_values(values: torch.Tensor | np.ndarray, max_abs: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row masks (rows = transitions) of non-finite entries and of finite entries beyond ``max_abs``."""
    array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = array.reshape(len(array), -1)
    finite = np.isfinite(array)
    nonfinite = ~finite.all(axis=1)
    if max_abs is None:
        return nonfinite, np.zeros_like(nonfinite)
    with np.errstate(invalid="ignore", over="ignore"):  # a bound beyond the dtype's range overflows to inf: fine
        huge = (finite & (np.abs(array) > max_abs)).any(axis=1)
    return nonfinite, huge


def check_dataset_values(
    raw: RawDataset, *, drop_nonfinite_episodes: bool = False, max_abs_value: float | None = MAX_ABS_VALUE
) -> RawDataset:
    """Refuse (or drop the episodes holding) non-finite or absurdly large observations, actions and rewards.

    Checked fields: ``observation``, ``next_observation``, ``action`` and ``reward`` (the stored float64 rewards). A
    value is bad when it is NaN or infinite, or (``max_abs_value`` not None) when its magnitude exceeds
    ``max_abs_value`` (default :data:`MAX_ABS_VALUE`, 1e10): garbled storage, not data. Without
    ``drop_nonfinite_episodes`` any bad value raises :class:`DatasetValueError`, one line giving, per field, the count
    and the first episode and step; with it, every episode holding a bad value is removed (a warning gives the count)
    and the remaining episodes are renumbered ``0, 1, ...``. Returns ``raw`` itself when nothing is bad.

    Example:
        >>> from tensordict import TensorDict
        >>> data = TensorDict({"observation": torch.tensor([[0.0], [float("nan")], [1.0]]),
        ...                    "action": torch.zeros(3, 1), "episode": torch.tensor([0, 0, 1]),
        ...                    "next": {"observation": torch.zeros(3, 1), "reward": torch.zeros(3, 1)}}, [3])
        >>> space = gym.spaces.Box(-1.0, 1.0, (1,))
        >>> raw = RawDataset("demo/nan-v0", Path("."), data, np.zeros(3), np.array([2, 1]), space, space)
        >>> try:
        ...     check_dataset_values(raw)
        ... except DatasetValueError as err:
        ...     print(str(err).split(", in ")[0])
        dataset 'demo/nan-v0' holds bad values: observation: 1 non-finite (first at episode 0 step 1)
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     kept = check_dataset_values(raw, drop_nonfinite_episodes=True)
        >>> kept.episode_lengths.tolist(), kept.transitions["episode"].tolist()
        ([1], [0])
    """
    data = raw.transitions
    fields = {
        "observation": data.get("observation"),
        "next_observation": data.get(("next", "observation")),
        "action": data.get("action"),
        "reward": raw.rewards,
    }
    episode = data.get("episode").numpy()
    starts = np.concatenate([[0], np.cumsum(raw.episode_lengths)[:-1]])
    bad_rows = np.zeros(len(episode), dtype=bool)
    problems = []
    bound = f"{max_abs_value:g}" if max_abs_value is not None else "inf"
    for name, values in fields.items():
        for mask, what in zip(_bad_values(values, max_abs_value), ("non-finite", f"|x| > {bound}")):
            if mask.any():
                first = int(np.argmax(mask))
                ep = int(episode[first])
                problems.append(
                    f"{name}: {int(mask.sum())} {what} (first at episode {ep} step {first - int(starts[ep])})"
                )
                bad_rows |= mask
    if not problems:
        return raw
    bad_episodes = np.unique(episode[bad_rows])
    if not drop_nonfinite_episodes or len(bad_episodes) == len(raw.episode_lengths):
        every = " (every episode: nothing would be left to drop)" if drop_nonfinite_episodes else ""
        raise DatasetValueError(
            f"dataset {raw.dataset_id!r} holds bad values: {'; '.join(problems)}, in {len(bad_episodes)} of "
            f"{len(raw.episode_lengths)} episodes{every}. Fix: rebuild or repair the dataset, or drop those episodes "
            "with load_dataset(..., drop_nonfinite_episodes=True) (recipes: +data.drop_nonfinite_episodes=true); "
            f"values with |x| > {bound} are accepted with max_abs_value=None or a larger bound."
        )
    keep_episode = np.ones(len(raw.episode_lengths), dtype=bool)
    keep_episode[bad_episodes] = False
    keep_rows = keep_episode[episode]
    transitions = data[torch.from_numpy(keep_rows)]
    lengths = raw.episode_lengths[keep_episode]
    transitions.set("episode", torch.repeat_interleave(torch.arange(len(lengths)), torch.as_tensor(lengths)))
    warnings.warn(
        f"dataset {raw.dataset_id!r}: dropped {len(bad_episodes)} of {len(raw.episode_lengths)} episodes "
        f"({int((~keep_rows).sum())} steps) holding bad values: {'; '.join(problems)}.",
        stacklevel=3,
    )
    return dataclasses.replace(raw, transitions=transitions, rewards=raw.rewards[keep_rows], episode_lengths=lengths)


def read_dataset(dataset_id: str, path: str | Path, *, cache: bool = True) -> RawDataset:
    """Read the Minari dataset stored in ``path`` (the directory holding ``data/``) and check it is complete.

    Reading a Minari HDF5 file costs a few milliseconds per episode (one HDF5 group each); with ``cache`` the
    concatenated float32 transitions are also saved in ``<path>/.diffrl-cache/`` (hidden from Minari) and reused
    while the dataset's files keep their sizes and modification times.

    Raises ``DatasetCorruptedError`` when the metadata or the HDF5 file cannot be read, or when the recorded step and
    episode counts or the per-episode array lengths disagree.

    Example:
        >>> import tempfile
        >>> from diffrl.data import make_dataset
        >>> from diffrl.data.paths import dataset_dir, datasets_path_override
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     _ = make_dataset("Pendulum-v1", "random", "demo/pendulum/random-v0", num_steps=300)
        ...     raw = read_dataset("demo/pendulum/random-v0", dataset_dir("demo/pendulum/random-v0"))
        >>> raw.transitions["observation"].shape, raw.episode_lengths.tolist(), raw.env_id
        (torch.Size([300, 3]), [200, 100], 'Pendulum-v1')
    """
    import minari

    path = Path(path)
    data_path = path / "data"
    if not data_path.is_dir():
        raise _corrupted(dataset_id, path, "the directory has no 'data' subdirectory")
    try:
        dataset = minari.MinariDataset(data_path)
        metadata = dict(dataset.storage.metadata)
        total_episodes, total_steps = int(metadata["total_episodes"]), int(metadata["total_steps"])
        key = _cache_key(data_path)
        cached = _load_cache(path, key) if cache else None
        if cached is None:
            transitions, rewards, lengths = _episodes_from_hdf5(dataset, dataset_id, path)
            if cache:
                _save_cache(path, key, transitions, rewards, lengths)
        else:
            transitions, rewards, lengths = cached
    except (OSError, KeyError, ValueError, TypeError, AssertionError, json.JSONDecodeError, StopIteration) as err:
        if isinstance(err, DatasetCorruptedError) or (isinstance(err, TypeError) and "unsupported space" in str(err)):
            raise
        raise _corrupted(dataset_id, path, f"{type(err).__name__}: {err}") from err
    if len(lengths) != total_episodes or int(lengths.sum()) != total_steps:
        raise _corrupted(
            dataset_id,
            path,
            f"the metadata records {total_episodes} episodes / {total_steps} steps but the file holds "
            f"{len(lengths)} episodes / {int(lengths.sum())} steps",
        )
    env_spec = dataset.env_spec
    env_id = env_spec.id if env_spec is not None else None
    if isinstance(metadata.get("eval_env_spec"), str):
        env_id = json.loads(metadata["eval_env_spec"]).get("id", env_id)
    return RawDataset(
        dataset_id=dataset_id,
        path=path,
        transitions=transitions,
        rewards=rewards,
        episode_lengths=lengths,
        observation_space=dataset.observation_space,
        action_space=dataset.action_space,
        env_spec=env_spec,
        env_id=env_id,
        metadata=metadata,
    )
