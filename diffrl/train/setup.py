"""What every recipe does before it builds anything: threads, device, seeds and the run; and, for recipes that learn
from a dataset, the dataset with its training and evaluation envs.

These read the recipe config keys shared by every recipe (``threads``, ``device``, ``seed``, ``data.*``, ``gamma``,
``env.name``, ``env.max_episode_steps``), so the recipes do not repeat the same dozen lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from diffrl.train.run import Run, start_run
from diffrl.train.seeding import resolve_device, seed_everything

__all__ = ["DatasetRecipe", "dataset_and_envs", "dataset_recipe", "online_envs", "prepare"]


def prepare(cfg: Any) -> tuple[torch.device, Run]:
    """Set torch's CPU threads (``threads``; 0 or null keeps torch's default), seed every generator (``seed``),
    resolve ``device`` and open the run (:func:`~diffrl.train.run.start_run`); returns ``(device, run)``.

    Example:
        >>> import tempfile
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"threads": 1, "device": "cpu", "seed": 0, "resume": None,
        ...                         "logger": {"dir": tempfile.mkdtemp() + "/run", "backend": "csv"}})
        >>> device, run = prepare(cfg)
        >>> device.type, torch.get_num_threads(), run.dir.name
        ('cpu', 1, 'run')
        >>> run.close()
    """
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))  # small networks on a CPU run fastest on one or two threads
    device = resolve_device(cfg.get("device", "auto"))
    seed_everything(int(cfg.seed))
    return device, start_run(cfg)


def dataset_and_envs(cfg: Mapping[str, Any], device: Any) -> tuple[Any, Any, Any]:
    """The offline dataset (``load_dataset(**cfg.data, gamma=cfg.gamma)``) and its training and evaluation envs
    (:func:`~diffrl.train.collectors.dataset_envs`: the dataset's observation and reward transforms for training, raw
    rewards for evaluation, seeded from ``seed``); returns ``(dataset, env, eval_env)``.
    """
    from diffrl.data import load_dataset
    from diffrl.train.collectors import dataset_envs

    rb = load_dataset(**cfg["data"], gamma=cfg["gamma"], device=device)
    env_cfg = cfg["env"]
    env, eval_env = dataset_envs(
        env_cfg["name"], rb, device=device, max_episode_steps=env_cfg["max_episode_steps"], seed=int(cfg["seed"])
    )
    return rb, env, eval_env


@dataclass(frozen=True)
class DatasetRecipe:
    """What a recipe learning from a dataset starts from (:func:`dataset_recipe`): the device and run of
    :func:`prepare`, the dataset ``rb`` with its training and evaluation envs (:func:`dataset_and_envs`), and the
    network sizes ``dims`` (``{"obs_dim": ..., "action_dim": ...}``, read from the dataset).
    """

    device: torch.device
    run: Run
    rb: Any
    env: Any
    eval_env: Any
    dims: dict[str, int]

    def actor_critic_args(self) -> dict[str, Any]:
        """:func:`~diffrl.train.builders.build_actor_critic`'s data-dependent arguments: ``dims``, ``device`` and the
        training env's ``action_spec`` (the actor's bounds)."""
        return {"dims": self.dims, "device": self.device, "action_spec": self.env.action_spec}

    def trainer_data(self) -> dict[str, Any]:
        """The data and envs as :class:`~diffrl.train.trainer.Trainer` keyword arguments: ``offline_rb``, ``env``,
        ``eval_env``."""
        return {"offline_rb": self.rb, "env": self.env, "eval_env": self.eval_env}


def dataset_recipe(cfg: Any) -> DatasetRecipe:
    """:func:`prepare`, then :func:`dataset_and_envs`, in that order (the run directory exists before the dataset
    loads, and the seed is set before anything draws from it).

    Example:
        >>> import tempfile
        >>> from omegaconf import OmegaConf
        >>> from diffrl.data import make_dataset
        >>> from diffrl.data.paths import datasets_path_override
        >>> cfg = OmegaConf.create({"threads": 1, "device": "cpu", "seed": 0, "resume": None, "gamma": 0.99,
        ...                         "logger": {"dir": tempfile.mkdtemp() + "/run", "backend": "csv"},
        ...                         "data": {"dataset_id": "demo/pendulum/random-v0", "batch_size": 8},
        ...                         "env": {"name": "Pendulum-v1", "max_episode_steps": 20}})
        >>> with datasets_path_override(tempfile.mkdtemp()):
        ...     _ = make_dataset("Pendulum-v1", "random", "demo/pendulum/random-v0", num_steps=40)
        ...     setup = dataset_recipe(cfg)
        >>> setup.dims, len(setup.rb), sorted(setup.trainer_data())
        ({'obs_dim': 3, 'action_dim': 1}, 40, ['env', 'eval_env', 'offline_rb'])
        >>> setup.actor_critic_args()["action_spec"].space.high.tolist()  # Pendulum's torque bound
        [2.0]
        >>> setup.run.close()
    """
    device, run = prepare(cfg)
    rb, env, eval_env = dataset_and_envs(cfg, device)
    dims = {"obs_dim": rb.obs_dim, "action_dim": rb.action_dim}
    return DatasetRecipe(device, run, rb, env, eval_env, dims)


def online_envs(cfg: Mapping[str, Any]) -> tuple[Any, Any, dict[str, int]]:
    """The envs of an online recipe (no dataset): ``(env, eval_env, dims)``.

    Actions are rescaled to ``[-1, 1]`` (TorchRL's ``ActionScaling``), training rewards are multiplied by
    ``env.reward_scale`` and the raw reward is kept for logging; evaluation reports raw returns. ``env`` is one env
    built here and seeded with ``seed`` when the ``collector`` group asks for one in-process env, else the picklable
    factory each collector worker calls. ``dims`` holds ``obs_dim`` and ``action_dim``.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"seed": 0, "env": {"name": "Pendulum-v1", "max_episode_steps": 5,
        ...                         "reward_scale": 1.0}, "collector": {"num_workers": 1, "backend": "auto"}})
        >>> env, eval_env, dims = online_envs(cfg)
        >>> dims, env.action_spec.space.high.tolist()
        ({'obs_dim': 3, 'action_dim': 1}, [1.0])
    """
    from diffrl.train.collectors import make_env_fn

    env_cfg, collector = cfg["env"], cfg.get("collector") or {}
    options = {"max_episode_steps": env_cfg["max_episode_steps"], "keep_raw_reward": True}
    env_fn = make_env_fn(env_cfg["name"], reward_scale=env_cfg["reward_scale"], **options)
    eval_env = make_env_fn(env_cfg["name"], transform_reward=False, seed=int(cfg["seed"]) + 10_000, **options)()
    dims = {"obs_dim": eval_env.observation_spec["observation"].shape[-1], "action_dim": eval_env.action_spec.shape[-1]}
    env = env_fn
    if int(collector.get("num_workers", 1)) == 1 and collector.get("backend", "auto") in ("auto", "direct"):
        env = env_fn()
        env.set_seed(int(cfg["seed"]))
    return env, eval_env, dims
