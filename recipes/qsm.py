"""Q-Score Matching: an online, off-policy diffusion policy trained by matching its noise prediction to grad_a Q.

Psenka, Escontrela, Abbeel and Ma, "Learning a Diffusion Model Policy from Rewards via Q-Score Matching", ICML 2024:

    collect random_steps transitions with uniformly random actions
    for every env step (a ~ pi(s) + N(0, 0.1^2), clipped; stored in the replay buffer):
        utd_ratio times: sample a batch (s, a, r, s', terminated)
            critic: y = r + gamma (1 - terminated) min_i Q'_i(s', clip(pi(s') + N(0, 0.1^2)));  Q_i <- y
            actor:  a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps;  eps_theta(a_t, t, s) <- -M_q mean_i grad_a Q_i(s, a_t)
            target critics <- Polyak(tau)

    python recipes/qsm.py                                  # Pendulum-v1, a few minutes on CPU
    python recipes/qsm.py config=hopper                    # the paper's settings on Hopper-v5
    python recipes/qsm.py collector.num_workers=2          # TorchRL's multi-process collector
    python recipes/qsm.py collector.backend=ray collector.num_workers=2  # TorchRL's Ray collector
    python recipes/qsm.py resume=runs/qsm/<run>            # continue a run exactly where it stopped
"""

from __future__ import annotations

import math

import torch
from tensordict.nn import TensorDictSequential
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import SoftUpdate

from diffrl.train import run_recipe
from diffrl.train.builders import build_actor_critic, loss_optimizers, training_state
from diffrl.train.setup import online_envs, prepare
from diffrl.train.trainer import Trainer
from diffrl.train.updates import critic_then_actor_update


def main(cfg):
    device, run = prepare(cfg)  # threads, seeds, device, the run directory

    # Envs act in [-1, 1]^A (ActionScaling); training rewards are scaled, evaluation reports raw returns.
    env, eval_env, dims = online_envs(cfg)

    # Networks and loss: a diffusion actor, an ensemble of critics, QSM's score-matching and TD(0) terms.
    actor, critic, loss = build_actor_critic(cfg, dims, device)
    optims = loss_optimizers(loss, actor=cfg.optim.actor_lr, critic=cfg.optim.critic_lr)
    decay = cfg.optim.actor_lr_decay_steps  # cosine to 0 over `decay` updates, then 0 (optax's cosine_decay_schedule)
    actor_schedule = torch.optim.lr_scheduler.LambdaLR(
        optims["actor"], lambda u: 0.5 * (1 + math.cos(math.pi * min(u, decay) / decay)) if decay > 0 else 1.0
    )
    updater = SoftUpdate(loss, tau=cfg.optim.tau)

    # Exploration: the stochastic sampler plus clipped Gaussian noise.
    exploration_policy = TensorDictSequential(
        actor,
        AdditiveGaussianModule(
            eval_env.action_spec, sigma_init=cfg.online.exploration_noise, sigma_end=cfg.online.exploration_noise
        ),
    )

    # The official order per update: critic step on the batch, then the actor against the updated critic.
    update = critic_then_actor_update(
        loss, optims["critic"], optims["actor"], updater, schedulers=[actor_schedule], compile=cfg.get("compile", False)
    )
    trainer = Trainer(
        cfg,
        update=update,
        run=run,
        checkpoint=training_state(optims, {"actor": actor_schedule}, loss=loss, updater=updater),
        policy=actor,
        exploration_policy=exploration_policy,
        env=env,
        eval_env=eval_env,
        store_keys=loss.in_keys,
        device=device,
        name="qsm",
    )
    result = trainer.run()
    run.close()
    return {**result, **run.logger.last}


if __name__ == "__main__":
    run_recipe(main)
