"""Online data collection from a config group: TorchRL's ``Collector`` in one process, in worker processes or on Ray.

Online recipes (QSM, the online phase of offline-to-online training) all need the same thing: step one or more copies
of an environment with the current policy, start with uniformly random actions for a warm-up, and hand the recipe
fixed-size batches of transitions to put in a replay buffer. TorchRL provides this; this module only maps a small,
documented config group onto it so every recipe exposes the same knobs::

    collector:
      frames_per_batch: 1     # env steps per yielded batch (summed over workers)
      num_workers: 1          # > 1: TorchRL's MultiSyncCollector (one env per worker process)
      backend: auto           # auto | direct | process | ray
      sync: true              # multi-worker: wait for every worker (true) or yield whichever is ready (false)
      ray_init: null          # backend=ray: kwargs of ray.init(), e.g. {num_cpus: 2} or {address: auto}
      ray_remote: null        # backend=ray: resources of each remote collector, e.g. {num_cpus: 1, memory: 1e9}

``backend: auto`` means ``direct`` for one worker and ``process`` for more. Everything runs through TorchRL's
``Collector`` entry point (``Collector(..., backend=..., num_collectors=...)``), which returns
``torchrl.collectors.Collector`` (direct), ``MultiSyncCollector``/``MultiAsyncCollector`` (process) or
``torchrl.collectors.distributed.RayCollector`` (ray; needs ``pip install ray``, the ``ray`` extra).

Warm-up: ``init_random_frames`` is a *total* over all workers (TorchRL's process collectors count it on the
collected total, its Ray collector splits it among the workers), rounded up to whole batches.

Policies in other processes hold a copy of the weights: call ``collector.update_policy_weights_()`` after optimizer
steps (a no-op for the direct backend, whose policy is the trained module itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["COLLECTOR_DEFAULTS", "EpisodeTracker", "dataset_envs", "make_collector", "make_env_fn"]

#: The keys of a collector config group and their defaults (see the module docstring).
COLLECTOR_DEFAULTS: dict[str, Any] = {
    "frames_per_batch": 1,
    "num_workers": 1,
    "backend": "auto",
    "sync": True,
    "ray_init": None,
    "ray_remote": None,
}
_BACKENDS = ("auto", "direct", "process", "ray")


def _build_env(name: str, normalize_actions: bool, options: dict[str, Any]):
    """Module-level (hence picklable) body of :func:`make_env_fn`."""
    from torchrl.envs import ActionScaling

    from diffrl.envs import make_env

    env = make_env(name, **options)
    if normalize_actions:
        # The policy acts in [-1, 1]^A whatever the env's bounds; ActionScaling maps back on the way to the env.
        env = env.append_transform(ActionScaling())
    return env


def make_env_fn(name: str, *, normalize_actions: bool = True, **options: Any) -> Callable[[], Any]:
    """A picklable factory of :func:`diffrl.envs.make_env` envs, for collectors whose workers build their own env.

    Args:
        name: gymnasium id.
        normalize_actions: append TorchRL's ``ActionScaling`` so the policy sees actions in ``[-1, 1]`` (the range
            diffusion policies and exploration noise scales are tuned for). Default True.
        **options: keyword arguments of ``make_env`` (``seed``, ``reward_scale``, ``max_episode_steps``, ...).

    Example:
        >>> env = make_env_fn("Pendulum-v1", seed=0)()
        >>> env.action_spec.space.low.tolist(), env.action_spec.space.high.tolist()
        ([-1.0], [1.0])
    """
    return functools.partial(_build_env, name, bool(normalize_actions), dict(options))


def _options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg`` over ``COLLECTOR_DEFAULTS``, validated; unknown keys and bad values are errors naming the fix."""
    given = dict(cfg or {})
    unknown = sorted(set(given) - set(COLLECTOR_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown collector option(s) {unknown}; accepted: {sorted(COLLECTOR_DEFAULTS)}.")
    opts = {**COLLECTOR_DEFAULTS, **given}
    for key in ("frames_per_batch", "num_workers"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"collector.{key} must be a positive integer, got {value!r}.")
    if opts["backend"] not in _BACKENDS:
        raise ValueError(f"collector.backend must be one of {_BACKENDS}, got {opts['backend']!r}.")
    if opts["backend"] == "auto":
        opts["backend"] = "direct" if opts["num_workers"] == 1 else "process"
    if opts["backend"] == "direct" and opts["num_workers"] != 1:
        raise ValueError(
            f"collector.backend=direct runs one env in this process, but num_workers={opts['num_workers']}; "
            "use backend=process (or auto) for several workers."
        )
    if opts["frames_per_batch"] % opts["num_workers"]:
        raise ValueError(
            f"collector.frames_per_batch ({opts['frames_per_batch']}) is split evenly over the workers and must be a "
            f"multiple of num_workers ({opts['num_workers']})."
        )
    return opts


def _to_plain(value: Any) -> Any:
    """OmegaConf nodes -> plain containers (Ray and TorchRL check for ``dict``)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def make_collector(
    cfg: Mapping[str, Any] | None,
    env_fn: Callable[[], Any],
    policy: Any,
    *,
    total_frames: int = -1,
    init_random_frames: int = 0,
    device: Any = None,
    seed: int | None = None,
    **collector_kwargs: Any,
):
    """A TorchRL collector for ``policy`` in the envs made by ``env_fn``, as the ``collector`` config group says.

    Args:
        cfg: the collector config group (keys and defaults in :data:`COLLECTOR_DEFAULTS`); None uses the defaults.
        env_fn: a picklable callable returning a TorchRL env (e.g. :func:`make_env_fn`); every worker calls it.
        policy: a TensorDict module writing ``"action"``; collection runs in TorchRL's RANDOM exploration mode, so
            exploration modules (e.g. ``AdditiveGaussianModule``) act.
        total_frames: env steps to collect in all (``-1``: endless). Rounded up to a multiple of
            ``frames_per_batch`` by TorchRL.
        init_random_frames: the first env steps (total over workers) take uniformly random actions from the action
            spec instead of the policy. Default 0.
        device: device of the policy and of the yielded batches (None: where they are); envs keep their own.
        seed: seeds the envs (worker i gets a distinct seed derived from it).
        **collector_kwargs: passed on to TorchRL's collector (e.g. ``max_frames_per_traj``).

    Returns:
        A ``torchrl.collectors.BaseCollector``; iterate it for batches of shape ``[frames_per_batch]`` (direct) or
        ``[num_workers, frames_per_batch // num_workers]`` (process, ray); flatten them before ``rb.extend``.

    Example:
        >>> import torch
        >>> from torchrl.collectors import RandomPolicy
        >>> env_fn = make_env_fn("Pendulum-v1")
        >>> collector = make_collector({"frames_per_batch": 4}, env_fn, RandomPolicy(env_fn().action_spec),
        ...                            total_frames=8, seed=0)
        >>> [batch.numel() for batch in collector]
        [4, 4]
        >>> collector.shutdown()
    """
    from torchrl.collectors import Collector

    opts = _options(_to_plain(cfg))
    backend, workers = opts["backend"], opts["num_workers"]
    init_random_frames = max(0, int(init_random_frames))
    kwargs: dict[str, Any] = {
        "frames_per_batch": opts["frames_per_batch"],
        "total_frames": total_frames,
        **collector_kwargs,
    }
    if device is not None:
        kwargs.setdefault("policy_device", device)
        kwargs.setdefault("storing_device", device)
    # Feed-forward policies need no InitTracker; opting out keeps the env as built and silences TorchRL 0.14's notice.
    kwargs.setdefault("auto_register_policy_transforms", False)
    if backend == "direct":
        collector = Collector(env_fn, policy, init_random_frames=init_random_frames, **kwargs)
    else:
        # Process workers act randomly while the parent's count of the total collected is under init_random_frames;
        # RayCollector divides init_random_frames and total_frames among its remote collectors itself.
        ray_options = {"backend_options": _ray_backend_options(opts, kwargs)} if backend == "ray" else {}
        collector = Collector(
            env_fn,
            policy,
            backend=backend,
            num_collectors=workers,
            sync=bool(opts["sync"]),
            init_random_frames=init_random_frames,
            **kwargs,
            **ray_options,
        )
        if ray_options:
            # RayCollector's weight synchronisation starts lazily, at the first update: start it now so the workers
            # act with the policy's current weights from the first batch on (and TorchRL does not warn about it).
            collector.update_policy_weights_()
    if seed is not None:
        collector.set_seed(int(seed))
    return collector


_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "object_store_memory")


def _resource_numbers(options: dict[str, Any]) -> dict[str, Any]:
    """Numeric strings of Ray's resource options -> numbers.

    YAML 1.1 (OmegaConf) reads exponent notation without a sign (``memory: 1e9``, ``5.0e8``) as a *string*, which Ray
    rejects with a type error; the user meant a number.
    """
    out = dict(options)
    for key in _RESOURCE_KEYS:
        value = out.get(key)
        if isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"collector ray option {key} must be a number, got {value!r}.") from None
    return out


def _ray_backend_options(opts: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``backend_options`` of TorchRL's ``RayCollector``: one single-env ``Collector`` per remote worker.

    Moves ``auto_register_policy_transforms`` out of ``kwargs``: RayCollector does not take this flag itself, its
    remote collectors do.
    """
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "collector.backend=ray needs Ray: pip install ray (or the diffrl 'ray' extra), or use backend=process."
        ) from err
    from torchrl.collectors import Collector

    ray_init = _resource_numbers(dict(_to_plain(opts["ray_init"]) or {}))
    ray_remote = _resource_numbers(dict(_to_plain(opts["ray_remote"]) or {}))
    options: dict[str, Any] = {"collector_class": Collector}
    options["collector_kwargs"] = {"auto_register_policy_transforms": kwargs.pop("auto_register_policy_transforms")}
    if ray_init:
        options["ray_init_config"] = ray_init
    if ray_remote:
        options["remote_configs"] = dict(ray_remote)
    return options


class EpisodeTracker:
    """Returns and lengths of the episodes that end in collected batches, per worker.

    Batches from multi-worker collectors are ``[num_workers, T]`` (one row per env, time last); a direct collector
    yields ``[T]``. Each env's running return is carried across batches, so an episode spanning several batches is
    counted once, when its ``done`` flag arrives. ``state_dict``/``load_state_dict`` keep the episode count.

    Args:
        reward_key: reward to sum, e.g. ``("next", "raw_reward")`` to report unscaled returns. Default
            ``("next", "reward")``.
        done_key: episode-end flag. Default ``("next", "done")``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> tracker = EpisodeTracker()
        >>> def batch(rewards, dones):
        ...     return TensorDict({"next": {"reward": torch.tensor(rewards).unsqueeze(-1),
        ...                                 "done": torch.tensor(dones).unsqueeze(-1)}}, [len(rewards)])
        >>> tracker.update(batch([1.0, 2.0], [False, False]))
        []
        >>> tracker.update(batch([3.0, 4.0], [True, False]))
        [(6.0, 3)]
        >>> tracker.episodes
        1
    """

    def __init__(self, reward_key: Any = ("next", "reward"), done_key: Any = ("next", "done")) -> None:
        self.reward_key = reward_key
        self.done_key = done_key
        self.episodes = 0
        self._returns: Any = None
        self._lengths: Any = None

    def update(self, batch: Any) -> list[tuple[float, int]]:
        """Account for one collected batch; returns ``(return, length)`` of every episode that ended in it."""
        import torch

        time_dim = batch.ndim - 1
        rewards = batch.get(self.reward_key).to(torch.float64)
        rewards = rewards.reshape(*batch.shape, -1).sum(-1).reshape(-1, batch.shape[time_dim])
        dones = batch.get(self.done_key).reshape(*batch.shape, -1).any(-1).reshape(-1, batch.shape[time_dim])
        envs = rewards.shape[0]
        if self._returns is None or self._returns.shape[0] != envs:
            self._returns = torch.zeros(envs, dtype=torch.float64)
            self._lengths = torch.zeros(envs, dtype=torch.long)
        finished = []
        for t in range(rewards.shape[1]):
            self._returns += rewards[:, t]
            self._lengths += 1
            for env in dones[:, t].nonzero().flatten().tolist():
                finished.append((float(self._returns[env]), int(self._lengths[env])))
                self._returns[env] = 0.0
                self._lengths[env] = 0
        self.episodes += len(finished)
        return finished

    def state_dict(self) -> dict[str, Any]:
        """The episode count and the running return and length of every env's episode in progress."""
        return {"episodes": self.episodes, "returns": self._returns, "lengths": self._lengths}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Without running returns (a multi-worker run whose workers start fresh episodes), counting restarts at 0.
        self.episodes = int(state["episodes"])
        self._returns, self._lengths = state.get("returns"), state.get("lengths")


def dataset_envs(
    name: str | None, dataset: Any, *, device: Any = None, max_episode_steps: int | None = None, seed: int = 0
) -> tuple[Any, Any]:
    """The training and evaluation envs of a recipe that learns from a dataset, built from the dataset and seeded.

    Training env: the dataset's observation normalisation and reward transform, so fresh transitions are in the
    units the critic learned, plus the raw reward in ("next", "raw_reward") so training-episode returns are logged
    in the reference scores' units. Evaluation env: the same observations, raw rewards. Seeds ``seed`` and the next
    one (``seed_env``'s convention), so the two envs draw different streams.

    Args:
        name: the gymnasium env id, or None for the env the dataset was collected in.
        dataset: an ``OfflineReplayBuffer`` (``load_dataset``), or None for plain envs.
        device: where the envs put their tensors.
        max_episode_steps: episode limit (None: the env's own).
        seed: the training env's seed.

    Example:
        >>> env, eval_env = dataset_envs("Pendulum-v1", None, max_episode_steps=3, seed=0)
        >>> [("next", "raw_reward") in e.rollout(3).keys(True) for e in (env, eval_env)]
        [True, False]
    """
    from diffrl.envs import make_env
    from diffrl.train.seeding import seed_env

    options = {"from_dataset": dataset, "device": device, "max_episode_steps": max_episode_steps}
    env = make_env(name, keep_raw_reward=True, **options)
    eval_env = make_env(name, transform_reward=False, **options)
    seed_env(eval_env, seed_env(env, seed))
    return env, eval_env
