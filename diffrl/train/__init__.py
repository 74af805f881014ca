"""The recipe toolkit: configuration, seeding and devices, logging, progress, evaluation, checkpoints, the trainer.

What every recipe needs and none should rewrite. A recipe reads::

    from diffrl.train import Trainer, resolve_device, run_recipe, seed_everything, start_run, summed_loss_update

    def main(cfg):
        device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        run = start_run(cfg)                      # run dir, config.yaml, CSV (+ TensorBoard/W&B) logger, checkpoints
        ...                                       # build data, env, networks, loss, optimizers, target updater
        update = summed_loss_update(loss, optimizers, updater)
        Trainer(cfg, update=update, run=run, policy=actor, offline_rb=rb, env=env, eval_env=eval_env,
                checkpoint={"loss": loss, "updater": updater, ...}).run()   # resume=, SIGINT, NaN handled there
        run.close()

    if __name__ == "__main__":
        run_recipe(main)                          # config from configs/<recipe>.yaml + key=value overrides

Modules: :mod:`~diffrl.train.config` (strict YAML + overrides), :mod:`~diffrl.train.seeding` (seeds, RNG states,
device), :mod:`~diffrl.train.metrics` (logging, reading CSV back), :mod:`~diffrl.train.progress` (tqdm bar, timer,
summary line), :mod:`~diffrl.train.evaluation`, :mod:`~diffrl.train.checkpoint`, :mod:`~diffrl.train.run` (the run
directory tying logger and checkpoints to ``resume=``), :mod:`~diffrl.train.trainer` (the one training loop) with
:mod:`~diffrl.train.updates` (update steps), :mod:`~diffrl.train.replay` (mixed batches, the online buffer),
:mod:`~diffrl.train.collectors` (TorchRL collectors, envs), :mod:`~diffrl.train.faults` (interrupts, non-finite
losses), :mod:`~diffrl.train.edis_hook` (EDIS in the trainer), :mod:`~diffrl.train.plot` (PNG learning curves; not
imported here, it needs matplotlib), :mod:`~diffrl.train.files` (atomic writes).
"""

from diffrl.train.checkpoint import Checkpointer, CheckpointError, find_checkpoint, latest_checkpoint, without_contents
from diffrl.train.collectors import EpisodeTracker, dataset_envs, make_collector, make_env_fn
from diffrl.train.config import ConfigError, config_path, load_config, run_recipe, to_yaml
from diffrl.train.evaluation import evaluate, normalized_score
from diffrl.train.faults import NonFiniteLossError, RunInterrupted
from diffrl.train.files import atomic_write, atomic_write_text
from diffrl.train.metrics import BACKENDS, MetricLogger, read_metrics
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
from diffrl.train.trainer import Hook, Trainer, TrainerSettings
from diffrl.train.updates import critic_then_actor_update, summed_loss_update

__all__ = [
    "BACKENDS",
    "BatchMixer",
    "CheckpointError",
    "Checkpointer",
    "ConfigError",
    "EpisodeTracker",
    "Hook",
    "MetricLogger",
    "NonFiniteLossError",
    "Progress",
    "Run",
    "RunInterrupted",
    "StoredItems",
    "Timer",
    "Trainer",
    "TrainerSettings",
    "atomic_write",
    "atomic_write_text",
    "config_path",
    "critic_then_actor_update",
    "dataset_envs",
    "env_rng_state",
    "evaluate",
    "find_checkpoint",
    "format_summary",
    "fresh_run_dir",
    "latest_checkpoint",
    "load_config",
    "make_collector",
    "make_env_fn",
    "make_online_buffer",
    "make_progress",
    "normalized_score",
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
