"""Cal-QL: calibrated conservative Q-learning pre-trained offline, then fine-tuned online; optionally with EDIS.

Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online Fine-Tuning", NeurIPS 2023, run with
CORL's protocol (``algorithms/finetune/cal_ql.py``):

    pre-train on the dataset: SAC actor + CQL critics whose policy-action values are lifted to max(Q, mc_return)
    switch: calibration off, cql_alpha <- cql_alpha_online
    fine-tune: one env step, then one update on a batch half offline, half online (online mc_return = 0)

With an ``edis`` config group (``recipes/edis_calql.py``, whose config extends this one), EDIS (Liu et al., ICML 2024)
also fits a diffusion model of transitions at the switch and every ``online.retrain_every`` env steps, steers it
toward the online state, policy and dynamics distributions with three energies, and replaces
``edis.synthetic_fraction`` of every online batch with its samples.

    python recipes/calql.py                                   # pendulum, a few minutes on CPU
    python recipes/calql.py config=hopper_medium              # CORL-scale settings on a Minari dataset
    python recipes/calql.py resume=runs/calql/<run>           # continue a run, in either phase
"""

from __future__ import annotations

import torch
from torchrl.objectives import SoftUpdate

from diffrl.train import run_recipe
from diffrl.train.builders import build_actor_critic, loss_optimizers, training_state
from diffrl.train.edis_hook import edis_hook
from diffrl.train.setup import dataset_recipe
from diffrl.train.trainer import Hook, Trainer
from diffrl.train.updates import summed_loss_update


def main(cfg):
    # Threads, seeds, device and the run directory; then the dataset, which carries mc_return, observation statistics
    # and reference scores. Online rewards get the dataset's reward transform; evaluation sees raw rewards, comparable
    # to the reference scores.
    setup = dataset_recipe(cfg)

    # Tanh-Gaussian actor within the env's bounds, the critic ensemble, Cal-QL's loss with its TD(0) target.
    actor, critic, loss = build_actor_critic(cfg, **setup.actor_critic_args(), gamma=cfg.gamma)
    edis = edis_hook(cfg, actor, **setup.dims, device=setup.device)  # None unless the config has an edis group

    # CORL: the entropy temperature learns at the policy rate, the Lagrange multiplier at the critic rate.
    lr = cfg.optim
    optims = loss_optimizers(loss, actor=lr.actor_lr, critic=lr.critic_lr, alpha=lr.actor_lr)
    if cfg.loss.cql_lagrange:
        optims.update(loss_optimizers(loss, alpha_prime=lr.critic_lr))
    updater = SoftUpdate(loss, tau=cfg.optim.tau)

    # At the switch: calibration off, cql_alpha <- online.cql_alpha. EDIS, when configured, refits its synthetic pool
    # there and every retrain_every env steps.
    switch = Hook(on_switch=lambda trainer: loss.switch_to_online(cfg.online.cql_alpha))

    # compile: the loss forward through torch.compile (its backward too); eager by default (compiling takes ~1 min)
    loss_fn = torch.compile(loss) if cfg.get("compile", False) else loss
    trainer = Trainer(
        cfg,
        update=summed_loss_update(loss_fn, optims.values(), updater),
        run=setup.run,
        checkpoint=training_state(optims, loss=loss, updater=updater, edis=edis),  # edis=None is left out
        policy=actor,
        **setup.trainer_data(),  # the dataset, the training env, the evaluation env
        hooks=[switch] if edis is None else [switch, edis],
        name="calql" if edis is None else "edis_calql",
    )
    with setup.run:  # closes the logger, also when training stops on an error
        return trainer.run()


if __name__ == "__main__":
    run_recipe(main)
