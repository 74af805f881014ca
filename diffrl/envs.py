"""Environment factory: gymnasium envs through TorchRL, with the transforms offline-to-online training needs.

``make_env`` builds ``TransformedEnv(GymWrapper(gym.make(name)), Compose(...))`` with, in order:

1. ``DoubleToFloat`` - MuJoCo observations are float64, networks and datasets are float32;
2. ``ObservationNorm`` (optional) - ``(obs - mean) / std`` with given statistics, or the statistics of a dataset loaded
   with ``load_dataset(..., normalize_obs=True)``, so the online observations match the offline ones;
3. the reward transform ``r * scale + bias`` (TorchRL's ``RewardScaling``) - by default the dataset's
   ``reward_transform``, so fresh transitions are in the units the critic was trained on (``keep_raw_reward`` also
   writes the untransformed reward to ("next", "raw_reward") for reporting returns);
4. ``StepCounter`` - "step_count" per episode; the episode limit itself is gymnasium's ``TimeLimit``
   (``max_episode_steps``), which sets ``truncated`` as in the datasets.

Dict / Tuple observation spaces are flattened with gymnasium's ``FlattenObservation``, in the order the dataset reader
uses. ``make_parallel_env`` does the same around a TorchRL ``ParallelEnv`` of worker processes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from diffrl.errors import ConfigError

__all__ = ["EnvConfigError", "make_env", "make_parallel_env"]


class EnvConfigError(ConfigError):
    """An env that cannot be made, or that does not match the dataset it is paired with (one line; exit 2 in recipes).

    Example:
        >>> try:
        ...     make_env("Pendulum-v0")
        ... except EnvConfigError as err:
        ...     print(str(err)[:40])
        cannot make gymnasium env 'Pendulum-v0':
    """


def _gym_env(name: str, max_episode_steps: int | None, env_kwargs: dict | None, device: Any):
    """The untransformed TorchRL env (module-level so ``ParallelEnv`` workers can pickle it)."""
    import gymnasium as gym
    from torchrl.envs import GymWrapper

    try:
        env = gym.make(name, max_episode_steps=max_episode_steps, **(env_kwargs or {}))
    except gym.error.Error as err:
        raise EnvConfigError(
            f"cannot make gymnasium env {name!r}: {' '.join(str(err).split())} Check the id (e.g. 'Pendulum-v1')."
        ) from None
    if isinstance(env.observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
        env = gym.wrappers.FlattenObservation(env)
    return GymWrapper(env, device=device)


def _resolve(name, from_dataset, obs_mean, obs_std, normalize_obs, reward_scale, reward_bias, transform_reward):
    """Settle env name, observation statistics and reward transform from the arguments and the dataset."""
    if name is None:
        name = getattr(from_dataset, "env_id", None)
        if name is None:
            raise EnvConfigError(
                "make_env needs an env name: pass name='Pendulum-v1', or a dataset that records its env "
                f"(from_dataset={getattr(from_dataset, 'dataset_id', from_dataset)!r} records none)."
            )
    if from_dataset is not None:
        if normalize_obs is None:
            normalize_obs = bool(getattr(from_dataset, "observation_normalized", False))
        if normalize_obs and obs_mean is None:
            obs_mean, obs_std = from_dataset.obs_mean, from_dataset.obs_std
    if (obs_mean is None) != (obs_std is None):
        raise ValueError("pass both obs_mean and obs_std (or neither) to normalise observations.")
    if normalize_obs and obs_mean is None:
        raise ValueError("normalize_obs=True needs obs_mean/obs_std or a dataset (from_dataset=...) to take them from.")
    scale, bias = 1.0, 0.0
    if transform_reward:
        dataset_transform = getattr(from_dataset, "reward_transform", None)
        if dataset_transform is not None:
            scale, bias = dataset_transform.scale, dataset_transform.bias
        scale = scale if reward_scale is None else reward_scale
        bias = bias if reward_bias is None else reward_bias
    return name, obs_mean, obs_std, float(scale), float(bias)


def _transforms(env, name, from_dataset, obs_mean, obs_std, scale, bias, keep_raw_reward):
    from torchrl.envs import (
        Compose,
        DoubleToFloat,
        ObservationNorm,
        RenameTransform,
        RewardScaling,
        StepCounter,
        TransformedEnv,
    )

    obs_dim = int(env.observation_spec["observation"].shape[-1])
    action_dim = int(env.action_spec.shape[-1]) if env.action_spec.shape else 1
    if from_dataset is not None:
        data_obs, data_act = getattr(from_dataset, "obs_dim", obs_dim), getattr(from_dataset, "action_dim", action_dim)
        if (data_obs, data_act) != (obs_dim, action_dim):
            env.close()
            data_env = getattr(from_dataset, "env_id", None)
            raise EnvConfigError(
                f"env {name!r} (observation ({obs_dim},), action ({action_dim},)) does not match dataset "
                f"{getattr(from_dataset, 'dataset_id', '?')!r} (observation ({data_obs},), action ({data_act},)), "
                f"collected in {data_env!r}. Fix: use the dataset's env (recipes: env.name=null) or a dataset "
                f"recorded in {name!r}."
            )
    transforms = [DoubleToFloat()]
    if obs_mean is not None:
        loc = torch.as_tensor(obs_mean, dtype=torch.float32, device=env.device).reshape(-1)
        std = torch.as_tensor(obs_std, dtype=torch.float32, device=env.device).reshape(-1)
        if loc.numel() != obs_dim or std.numel() != obs_dim:
            raise EnvConfigError(
                f"obs_mean/obs_std have {loc.numel()}/{std.numel()} entries but env {name!r} observes size {obs_dim}."
            )
        transforms.append(ObservationNorm(loc=loc, scale=std, in_keys=["observation"], standard_normal=True))
    if keep_raw_reward:
        transforms.append(RenameTransform(["reward"], ["raw_reward"], create_copy=True))
    if scale != 1.0 or bias != 0.0:
        transforms.append(RewardScaling(loc=bias, scale=scale))
    transforms.append(StepCounter())
    return TransformedEnv(env, Compose(*transforms))


def make_env(
    name: str | None = None,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    obs_mean: torch.Tensor | None = None,
    obs_std: torch.Tensor | None = None,
    normalize_obs: bool | None = None,
    reward_scale: float | None = None,
    reward_bias: float | None = None,
    transform_reward: bool = True,
    keep_raw_reward: bool = False,
    max_episode_steps: int | None = None,
    from_dataset: Any = None,
    env_kwargs: dict | None = None,
):
    """A TorchRL env for gymnasium env ``name`` with DoubleToFloat, optional observation normalisation, the reward
    transform and a step counter (see the module docstring).

    Args:
        name: gymnasium id; default ``from_dataset.env_id``.
        seed: seeds the env (``env.set_seed``).
        device: device of the env's tensors.
        obs_mean, obs_std: normalise observations as ``(obs - obs_mean) / obs_std``.
        normalize_obs: use ``from_dataset``'s statistics; default: exactly when the dataset stores normalised
            observations (``load_dataset(..., normalize_obs=True)``).
        reward_scale, reward_bias: ``r * reward_scale + reward_bias``; default 1 and 0, or the dataset's transform.
        transform_reward: False leaves rewards raw (e.g. for an evaluation env whose returns are reported).
        keep_raw_reward: also write the raw reward to ("next", "raw_reward").
        max_episode_steps: episode limit (gymnasium ``TimeLimit``); default the env's own.
        from_dataset: an :class:`~diffrl.data.OfflineReplayBuffer`; its observation and action sizes must match the
            env's (else :class:`EnvConfigError`, naming both shapes, before anything runs).
        env_kwargs: extra ``gym.make`` arguments.

    Example:
        >>> env = make_env("Pendulum-v1", seed=0, reward_scale=0.1, keep_raw_reward=True, max_episode_steps=5)
        >>> td = env.rollout(10)
        >>> td.batch_size, bool(torch.allclose(td["next", "reward"], 0.1 * td["next", "raw_reward"]))
        (torch.Size([5]), True)
    """
    name, obs_mean, obs_std, scale, bias = _resolve(
        name, from_dataset, obs_mean, obs_std, normalize_obs, reward_scale, reward_bias, transform_reward
    )
    env = _transforms(
        _gym_env(name, max_episode_steps, env_kwargs, device),
        name,
        from_dataset,
        obs_mean,
        obs_std,
        scale,
        bias,
        keep_raw_reward,
    )
    if seed is not None:
        env.set_seed(seed)
    return env


def make_parallel_env(
    name: str | None = None,
    num_workers: int = 2,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    max_episode_steps: int | None = None,
    env_kwargs: dict | None = None,
    from_dataset: Any = None,
    **options: Any,
):
    """``num_workers`` copies of ``make_env``'s env stepping in worker processes (TorchRL ``ParallelEnv``); the
    transforms run once on the batched output. ``options`` are ``make_env``'s (obs_mean, obs_std, normalize_obs,
    reward_scale, reward_bias, transform_reward, keep_raw_reward). The batch dimension is ``[num_workers]``.

    Example (skipped in doctests: starting worker processes takes seconds):
        >>> env = make_parallel_env("Pendulum-v1", 2, seed=0, max_episode_steps=3)  # doctest: +SKIP
        >>> env.rollout(3).batch_size  # doctest: +SKIP
        torch.Size([2, 3])
        >>> env.close()  # doctest: +SKIP
    """
    from torchrl.envs import ParallelEnv

    name, obs_mean, obs_std, scale, bias = _resolve(
        name,
        from_dataset,
        options.pop("obs_mean", None),
        options.pop("obs_std", None),
        options.pop("normalize_obs", None),
        options.pop("reward_scale", None),
        options.pop("reward_bias", None),
        options.pop("transform_reward", True),
    )
    keep_raw_reward = options.pop("keep_raw_reward", False)
    if options:
        raise TypeError(f"make_parallel_env got unknown options {sorted(options)}; see make_env's arguments.")
    base = ParallelEnv(
        num_workers, functools.partial(_gym_env, name, max_episode_steps, env_kwargs, "cpu"), device=device
    )
    env = _transforms(base, name, from_dataset, obs_mean, obs_std, scale, bias, keep_raw_reward)
    if seed is not None:
        env.set_seed(seed)
    return env
