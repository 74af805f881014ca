"""``load_dataset``: a Minari dataset as a TorchRL replay buffer, from wherever it can come from.

Sources, in order (docs/architecture.md, "Data"):

1. the local Minari datasets directory (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``);
2. diffrl's registry of dataset generators (kind ``dataset``, name = dataset id): built on first use, then read;
3. ``minari.download_dataset`` (needs the internet and Minari's remote extras).

If none works, the error lists what each source said and which datasets exist locally.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import RandomSampler, TensorDictReplayBuffer, TensorStorage

from diffrl.data.paths import check_dataset_id, dataset_dir, datasets_root, local_dataset_ids
from diffrl.data.reading import (
    MAX_ABS_VALUE,
    DatasetCorruptedError,
    DatasetNotFoundError,
    DatasetValueError,
    check_dataset_values,
    read_dataset,
)
from diffrl.data.returns import RewardTransform, discounted_return_to_go, episode_returns, make_reward_transform

__all__ = ["OfflineReplayBuffer", "load_dataset", "DatasetNotFoundError", "DatasetCorruptedError", "DatasetValueError"]


class OfflineReplayBuffer(TensorDictReplayBuffer):
    """A ``TensorDictReplayBuffer`` over a whole offline dataset, which also carries what training needs to know.

    Storage: one ``TensorStorage`` holding every transition on ``device`` (sampling indexes it there, no host copy per
    batch); sampler: ``RandomSampler`` (uniform with replacement) unless another is given.

    Attributes:
        dataset_id: the Minari dataset id.
        env_id: gymnasium id of the env to evaluate in (``None`` if the dataset records none).
        env_spec: the gymnasium ``EnvSpec`` the data was collected with (or ``None``).
        obs_mean, obs_std: per-dimension statistics of the raw observations (``obs_std`` includes ``obs_std_eps``).
        observation_normalized: True if the stored observations are ``(obs - obs_mean) / obs_std``.
        reward_transform: the :class:`RewardTransform` already applied to the stored rewards (and to ``mc_return``).
        gamma: discount used for ``mc_return``.
        ref_min_score, ref_max_score: the dataset's reference returns (``None`` when it has none).
        episode_lengths, episode_returns: per-episode numbers of steps and raw undiscounted returns (numpy).
        metadata: Minari's metadata dict.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> data = TensorDict({"observation": torch.arange(6.0).reshape(3, 2)}, batch_size=[3])
        >>> rb = OfflineReplayBuffer(data, batch_size=4, dataset_id="demo-v0", ref_min_score=-10.0, ref_max_score=10.0)
        >>> rb.sample().batch_size, len(rb), rb.normalized_score(0.0)
        (torch.Size([4]), 3, 50.0)
    """

    def __init__(
        self,
        transitions: TensorDictBase,
        *,
        batch_size: int | None = 256,
        device: torch.device | str = "cpu",
        sampler: Any = None,
        transform: Any = None,
        prefetch: int | None = None,
        seed: int | None = None,
        dataset_id: str = "",
        env_id: str | None = None,
        env_spec: Any = None,
        obs_mean: torch.Tensor | None = None,
        obs_std: torch.Tensor | None = None,
        observation_normalized: bool = False,
        reward_transform: RewardTransform | None = None,
        gamma: float | None = None,
        ref_min_score: float | None = None,
        ref_max_score: float | None = None,
        episode_lengths: np.ndarray | None = None,
        episode_returns: np.ndarray | None = None,
        metadata: dict | None = None,
    ) -> None:
        device = torch.device(device)
        transitions = transitions.to(device)
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        super().__init__(
            storage=TensorStorage(transitions, device=device),
            sampler=sampler if sampler is not None else RandomSampler(),
            batch_size=batch_size,
            transform=transform,
            prefetch=prefetch,
            generator=generator,
        )
        observation = transitions.get("observation", None)
        if obs_mean is None and observation is not None:
            obs_mean, obs_std = observation.mean(0), observation.std(0, correction=0)
        self.dataset_id = dataset_id
        self.env_id = env_id
        self.env_spec = env_spec
        self.obs_mean = obs_mean.to(device) if obs_mean is not None else None
        self.obs_std = obs_std.to(device) if obs_std is not None else None
        self.observation_normalized = observation_normalized
        self.reward_transform = reward_transform if reward_transform is not None else RewardTransform()
        self.gamma = gamma
        self.ref_min_score = ref_min_score
        self.ref_max_score = ref_max_score
        self.episode_lengths = episode_lengths
        self.episode_returns = episode_returns
        self.metadata = metadata or {}

    @property
    def transitions(self) -> TensorDictBase:
        """Every stored transition as one TensorDict (a view of the storage, not a copy)."""
        return self.storage._storage

    @property
    def obs_dim(self) -> int:
        """Size of the (flat) observation."""
        return int(self.transitions.get("observation").shape[-1])

    @property
    def action_dim(self) -> int:
        """Size of the action."""
        return int(self.transitions.get("action").shape[-1])

    @property
    def has_reference_scores(self) -> bool:
        """True when the dataset carries ``ref_min_score`` and ``ref_max_score``."""
        return self.ref_min_score is not None and self.ref_max_score is not None

    def normalized_score(self, returns):
        """D4RL-style normalised score ``100 * (return - ref_min) / (ref_max - ref_min)`` of raw episode returns.

        Works on a number, a numpy array or a tensor. Raises if the dataset has no reference scores.
        """
        if not self.has_reference_scores:
            raise ValueError(
                f"dataset {self.dataset_id!r} has no reference scores (ref_min_score / ref_max_score); "
                "normalised scores are undefined. Rebuild it with make_dataset(..., ref_min_score=, ref_max_score=)."
            )
        return 100.0 * (returns - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dataset_id={self.dataset_id!r}, env_id={self.env_id!r}, size={len(self)}, "
            f"batch_size={self._batch_size}, device={self.transitions.device}, "
            f"reward_transform={self.reward_transform.description!r})"
        )


def _registered_ids() -> list[str]:
    from diffrl import registry

    try:
        return registry.names("dataset")
    except LookupError:
        return []


def _try_generator(dataset_id: str, tried: list[str]) -> bool:
    from diffrl import registry

    try:
        generator = registry.get("dataset", dataset_id)
    except LookupError:
        tried.append(f"registered generators (none named {dataset_id!r})")
        return False
    try:
        generator()
    except FileExistsError:  # another process finished building it first
        pass
    return True


def _try_download(dataset_id: str, tried: list[str]) -> bool:
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as err:  # network, missing remote extras, unknown remote id: all mean "not available"
        reason = " ".join(str(err).split())[:200]
        tried.append(f"minari.download_dataset ({type(err).__name__}{': ' + reason if reason else ''})")
        return False
    return True


def _find(dataset_id: str, *, build: bool, download: bool) -> Path:
    path = dataset_dir(dataset_id)
    if path.exists():
        return path  # complete or not: read_dataset reports a partial directory rather than hiding it
    tried = [f"local Minari datasets (no directory {path})"]
    if build and _try_generator(dataset_id, tried) and path.exists():
        return path
    if not build:
        tried.append("registered generators (skipped: build=False)")
    if download and _try_download(dataset_id, tried) and path.exists():
        return path
    if not download:
        tried.append("minari download (skipped: download=False)")
    local, registered = local_dataset_ids(), _registered_ids()
    known = list(dict.fromkeys(local + registered))  # a built generator's id is both local and registered: once
    close = difflib.get_close_matches(dataset_id, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    not_built = [name for name in registered if name not in local]
    raise DatasetNotFoundError(
        f"dataset {dataset_id!r} was not found; tried: {'; '.join(tried)}.{hint} Available: local (in "
        f"{datasets_root()}): {', '.join(local) or 'none'}; registered, built on first use: "
        f"{', '.join(not_built) or 'none'}. Fix: check the id (data.dataset_id in recipes), build it with "
        "`python -m diffrl.data make`, or set MINARI_DATASETS_PATH to the directory holding it."
    )


def load_dataset(
    dataset_id: str,
    *,
    batch_size: int | None = 256,
    device: torch.device | str = "cpu",
    gamma: float = 0.99,
    sparse_reward: bool = False,
    fail_reward: float = 0.0,
    reward_scale: float = 1.0,
    reward_bias: float = 0.0,
    normalize_reward: bool = False,
    reward_range_steps: int = 1000,
    normalize_obs: bool = False,
    obs_std_eps: float = 1e-3,
    drop_nonfinite_episodes: bool = False,
    max_abs_value: float | None = MAX_ABS_VALUE,
    build: bool = True,
    download: bool = True,
    cache: bool = True,
    sampler: Any = None,
    transform: Any = None,
    prefetch: int | None = None,
    seed: int | None = None,
) -> OfflineReplayBuffer:
    """Load a Minari dataset as an :class:`OfflineReplayBuffer` (local, else registered generator, else download).

    What the buffer holds (float32; rewards, flags and ``mc_return`` shaped [N, 1]): "observation", "action",
    "episode" (episode index), "mc_return" and ("next", "observation" / "reward" / "done" / "terminated" /
    "truncated"). Processing, in CORL's order:

    1. rewards: ``r' = r * reward_scale + reward_bias``, preceded (``normalize_reward``) by CORL/IQL's return-range
       normalisation ``r * reward_range_steps / (max episode return - min episode return)``;
    2. ``mc_return``: discounted return-to-go of the transformed rewards within each episode, no bootstrap after the
       last step whether it terminated or was truncated; with ``sparse_reward``, episodes whose last reward is the
       (transformed) ``fail_reward`` get ``r_fail / (1 - gamma)`` at every step (CORL's AntMaze rule);
    3. observation statistics ``obs_mean`` / ``obs_std`` (+ ``obs_std_eps``, as CORL) over the dataset's observations;
       with ``normalize_obs`` the stored observations (and next observations) are normalised with them.

    Args:
        dataset_id: Minari dataset id, e.g. ``"diffrl/pendulum/medium-v0"`` or ``"mujoco/hopper/medium-v0"``.
        batch_size: default ``sample()`` size. Default 256.
        device: where the data lives (the training device). Default "cpu".
        gamma: discount of ``mc_return``. Default 0.99.
        sparse_reward, fail_reward: CORL's sparse-reward rule for ``mc_return`` (off by default; raw failure reward 0,
            as for AntMaze, where CORL reads it from ``ref_min_score`` = 0).
        reward_scale, reward_bias, normalize_reward, reward_range_steps: the reward transform (see step 1).
        normalize_obs: store normalised observations. Default False (statistics are available either way).
        obs_std_eps: added to the standard deviation. Default 1e-3.
        drop_nonfinite_episodes: drop the episodes holding a NaN / infinite (or beyond ``max_abs_value``)
            observation, action or reward, with a warning giving the count. Default False: such values are an error.
        max_abs_value: magnitude above which a finite value counts as garbled (default 1e10); None accepts any.
        build: allow building a registered generator's dataset. download: allow ``minari.download_dataset``.
        cache: reuse (and write) the dataset's load cache, ``<dataset dir>/.diffrl-cache`` (see
            :func:`~diffrl.data.reading.read_dataset`): the HDF5 file is read once, later loads take a fraction of it.
        sampler, transform, prefetch: passed to the replay buffer. seed: seeds the buffer's sampling generator.

    Raises:
        DatasetNotFoundError: no source has the dataset (the message lists each source tried and the local datasets).
        DatasetCorruptedError: a local dataset exists but is unreadable or incomplete.
        DatasetValueError: the dataset holds non-finite or absurdly large values (see
            :func:`~diffrl.data.reading.check_dataset_values`; the message gives counts, field, first episode and step).

    Example:
        >>> import tempfile
        >>> from diffrl.data import make_dataset
        >>> from diffrl.data.paths import datasets_path_override
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     _ = make_dataset("Pendulum-v1", "random", "demo/pendulum/random-v0", num_episodes=2)
        ...     rb = load_dataset("demo/pendulum/random-v0", batch_size=8, gamma=0.9)
        >>> batch = rb.sample()
        >>> batch["next", "reward"].shape, batch["mc_return"].dtype, len(rb), rb.env_id
        (torch.Size([8, 1]), torch.float32, 400, 'Pendulum-v1')
    """
    check_dataset_id(dataset_id)
    raw = read_dataset(dataset_id, _find(dataset_id, build=build, download=download), cache=cache)
    raw = check_dataset_values(raw, drop_nonfinite_episodes=drop_nonfinite_episodes, max_abs_value=max_abs_value)
    transitions = raw.transitions
    returns = episode_returns(raw.rewards, raw.episode_lengths)
    reward_transform = make_reward_transform(
        returns,
        reward_scale=reward_scale,
        reward_bias=reward_bias,
        normalize_reward=normalize_reward,
        range_steps=reward_range_steps,
    )
    rewards = reward_transform(raw.rewards)
    mc_return = discounted_return_to_go(
        rewards,
        raw.episode_lengths,
        gamma,
        sparse_fail_reward=float(reward_transform(fail_reward)) if sparse_reward else None,
    )
    transitions.set(("next", "reward"), torch.from_numpy(rewards).to(torch.float32).unsqueeze(-1))
    transitions.set("mc_return", torch.from_numpy(mc_return).to(torch.float32).unsqueeze(-1))
    observation = transitions.get("observation")
    obs_mean = observation.mean(0)
    obs_std = observation.std(0, correction=0) + obs_std_eps
    if normalize_obs:
        transitions.set("observation", (observation - obs_mean) / obs_std)
        transitions.set(("next", "observation"), (transitions.get(("next", "observation")) - obs_mean) / obs_std)
    metadata = raw.metadata
    ref_min, ref_max = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    # How the buffer samples: this function's own arguments, passed on unchanged.
    sampling = dict(sampler=sampler, batch_size=batch_size, prefetch=prefetch, seed=seed, transform=transform)
    return OfflineReplayBuffer(
        transitions,
        device=device,
        # what the dataset is, and its episodes
        dataset_id=raw.dataset_id,
        env_id=raw.env_id,
        env_spec=raw.env_spec,
        episode_lengths=raw.episode_lengths,
        episode_returns=returns,
        metadata=metadata,
        ref_min_score=float(ref_min) if ref_min is not None else None,
        ref_max_score=float(ref_max) if ref_max is not None else None,
        # how it was processed: online data must go through the same steps
        obs_mean=obs_mean,
        obs_std=obs_std,
        observation_normalized=normalize_obs,
        reward_transform=reward_transform,
        gamma=gamma,
        **sampling,
    )
