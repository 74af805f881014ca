"""The recipe toolkit: configuration, seeding and devices, logging, progress, evaluation, checkpoints.

What every recipe needs and none should rewrite. A recipe reads::

    from diffrl.train import evaluate, make_progress, resolve_device, run_recipe, seed_everything, start_run

    def main(cfg):
        device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        run = start_run(cfg)                      # run dir, config.yaml, CSV (+ TensorBoard/W&B) logger, checkpoints
        ...                                       # build data, networks, loss, optimizers, updater
        start = run.resume(actor=actor, loss=loss, optim=optim, updater=updater, rb=rb)   # 0 unless resume=...
        bar = make_progress(cfg.offline.steps, "offline", initial=start)
        for step in range(start, cfg.offline.steps):
            ...                                   # sample, loss, backward, optimizer step, updater.step()
            bar.update(1, metrics)
            if (step + 1) % cfg.eval.every == 0:
                run.log(evaluate(env, policy, cfg.eval.episodes), step + 1)
                run.save(step + 1, actor=actor, loss=loss, optim=optim, updater=updater, rb=rb)
        run.close()

    if __name__ == "__main__":
        run_recipe(main)                          # config from configs/<recipe>.yaml + key=value overrides

Modules: :mod:`~diffrl.train.config` (strict YAML + overrides), :mod:`~diffrl.train.seeding` (seeds, RNG states,
device), :mod:`~diffrl.train.metrics` (logging, reading CSV back), :mod:`~diffrl.train.progress` (tqdm bar, timer,
summary line), :mod:`~diffrl.train.evaluation`, :mod:`~diffrl.train.checkpoint`, :mod:`~diffrl.train.run` (the run
directory tying logger and checkpoints to ``resume=``), :mod:`~diffrl.train.o2o` (the offline-to-online loop) with
:mod:`~diffrl.train.replay` (mixed batches, the online buffer), :mod:`~diffrl.train.plot` (PNG learning curves; not
imported here, it needs matplotlib), :mod:`~diffrl.train.files` (atomic writes).

Names are imported on first access, so ``python recipe.py --help`` and configuration errors answer before torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> defining module; attributes load on first access (PEP 562).
_EXPORTS = {
    "config": ("ConfigError", "config_path", "load_config", "run_recipe", "to_yaml"),
    "seeding": (
        "env_rng_state",
        "resolve_device",
        "rng_state",
        "seed_env",
        "seed_everything",
        "set_env_rng_state",
        "set_rng_state",
    ),
    "metrics": ("BACKENDS", "MetricLogger", "read_metrics"),
    "progress": ("Progress", "Timer", "format_summary", "make_progress"),
    "evaluation": ("evaluate", "normalized_score"),
    "checkpoint": ("CheckpointError", "Checkpointer", "find_checkpoint", "latest_checkpoint", "without_contents"),
    "run": ("Run", "fresh_run_dir", "start_run"),
    "files": ("atomic_write", "atomic_write_text"),
    "o2o": ("O2OHook", "O2OSettings", "OfflineToOnline", "o2o_envs", "summed_loss_update"),
    "replay": ("BatchMixer", "StoredItems", "make_online_buffer"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "BACKENDS",
    "BatchMixer",
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "MetricLogger",
    "O2OHook",
    "O2OSettings",
    "OfflineToOnline",
    "Progress",
    "Run",
    "StoredItems",
    "Timer",
    "atomic_write",
    "atomic_write_text",
    "config_path",
    "env_rng_state",
    "evaluate",
    "find_checkpoint",
    "format_summary",
    "fresh_run_dir",
    "latest_checkpoint",
    "load_config",
    "make_online_buffer",
    "make_progress",
    "normalized_score",
    "o2o_envs",
    "read_metrics",
    "resolve_device",
    "rng_state",
    "run_recipe",
    "seed_env",
    "seed_everything",
    "set_env_rng_state",
    "set_rng_state",
    "start_run",
    "summed_loss_update",
    "to_yaml",
    "without_contents",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'diffrl.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"diffrl.train.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from diffrl.train.checkpoint import (
        Checkpointer,
        CheckpointError,
        find_checkpoint,
        latest_checkpoint,
        without_contents,
    )
    from diffrl.train.config import ConfigError, config_path, load_config, run_recipe, to_yaml
    from diffrl.train.evaluation import evaluate, normalized_score
    from diffrl.train.files import atomic_write, atomic_write_text
    from diffrl.train.metrics import BACKENDS, MetricLogger, read_metrics
    from diffrl.train.o2o import O2OHook, O2OSettings, OfflineToOnline, o2o_envs, summed_loss_update
    from diffrl.train.progress import Progress, Timer, format_summary, make_progress
    from diffrl.train.replay import BatchMixer, StoredItems, make_online_buffer
    from diffrl.train.run import Run, fresh_run_dir, start_run
    from diffrl.train.seeding import (
        env_rng_state,
        resolve_device,
        rng_state,
        seed_env,
        seed_everything,
        set_env_rng_state,
        set_rng_state,
    )
