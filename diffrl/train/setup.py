"""What every recipe does before it builds anything: threads, device, seeds and the run; and, for recipes that learn
from a dataset, the dataset with its training and evaluation envs.

These read the recipe config keys shared by every recipe (``threads``, ``device``, ``seed``, ``data.*``, ``gamma``,
``env.name``, ``env.max_episode_steps``), so the recipes do not repeat the same dozen lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from diffrl.train.run import Run, start_run
from diffrl.train.seeding import resolve_device, seed_everything

__all__ = ["dataset_and_envs", "prepare"]


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
