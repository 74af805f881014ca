"""SAC: soft actor-critic with TorchRL's ``SACLoss``, online, as the Gaussian baseline of Q-Score Matching.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018, with CleanRL's MuJoCo settings:

    collect random_steps transitions with uniformly random actions
    for every env step (a ~ pi(s), a tanh-Gaussian; stored in the replay buffer):
        utd_ratio times: sample a batch (s, a, r, s', terminated)
            critic: y = r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha log pi(a' | s')), a' ~ pi(s');  Q_i <- y
            actor:  maximise min_i Q_i(s, a~) - alpha log pi(a~ | s);  alpha: entropy target -dim(A)
            target critics <- Polyak(tau)

    python recipes/sac.py                                   # Pendulum-v1, a few minutes on CPU
    python recipes/sac.py env.name=Hopper-v5 online.steps=100000 online.random_steps=5000
"""

from __future__ import annotations

import torch
from torchrl.objectives import SoftUpdate

from diffrl.train import run_recipe
from diffrl.train.builders import build_actor_critic, loss_optimizers, training_state
from diffrl.train.setup import online_envs, prepare
from diffrl.train.trainer import Trainer
from diffrl.train.updates import summed_loss_update


def main(cfg):
    device, run = prepare(cfg)  # threads, seeds, device, the run directory
    env, eval_env, dims = online_envs(cfg)  # actions in [-1, 1]; raw rewards for evaluation

    # A tanh-Gaussian actor within [-1, 1], one Q network that SACLoss copies into twin critics.
    actor, critic, loss = build_actor_critic(cfg, dims, device, action_spec=eval_env.action_spec, gamma=cfg.gamma)
    # CleanRL: the critics and the temperature learn faster than the actor
    optims = loss_optimizers(loss, actor=cfg.optim.actor_lr, critic=cfg.optim.critic_lr, alpha=cfg.optim.alpha_lr)
    updater = SoftUpdate(loss, tau=cfg.optim.tau)

    trainer = Trainer(
        cfg,
        update=summed_loss_update(torch.compile(loss) if cfg.get("compile", False) else loss, optims.values(), updater),
        run=run,
        checkpoint=training_state(optims, loss=loss, updater=updater),
        policy=actor,
        env=env,
        eval_env=eval_env,
        store_keys=loss.in_keys,  # what SACLoss reads: no collector bookkeeping in the replay buffer
        name="sac",
    )
    try:
        return {**trainer.run(), **run.logger.last}
    finally:
        run.close()


if __name__ == "__main__":
    run_recipe(main)
