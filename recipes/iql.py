"""IQL: implicit Q-learning pre-trained offline, then fine-tuned online; optionally with EDIS.

Kostrikov et al., "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022, run with CORL's fine-tuning
protocol (``algorithms/finetune/iql.py``) and TorchRL's ``IQLLoss``:

    V  <- expectile regression of min_i Q'_i(s, a) (expectile tau)
    Q  <- r + gamma (1 - terminated) V(s')
    pi <- advantage-weighted regression, weights exp(temperature * (min_i Q'_i(s, a) - V(s))) clipped at 100
          (actor lr: cosine annealing over the offline steps, stepped on every update in both phases, as CORL)
    fine-tune: the same updates, one per env step, on batches drawn from the dataset and the online transitions

With an ``edis`` config group (``recipes/edis_iql.py``, whose config extends this one), EDIS (Liu et al., ICML 2024)
replaces ``edis.synthetic_fraction`` of every online batch with energy-guided synthetic transitions, refitted at the
switch and every ``online.retrain_every`` env steps.

    python recipes/iql.py                                   # pendulum, a few minutes on CPU
    python recipes/iql.py config=antmaze_umaze              # CORL-scale settings on a Minari dataset
    python recipes/iql.py resume=runs/iql/<run>             # continue a run, in either phase
"""

from __future__ import annotations

import torch
from torchrl.objectives import SoftUpdate

from diffrl.train import run_recipe
from diffrl.train.builders import build_actor_critic, loss_optimizers, training_state
from diffrl.train.edis_hook import edis_hook
from diffrl.train.setup import dataset_recipe
from diffrl.train.trainer import Trainer
from diffrl.train.updates import summed_loss_update


def main(cfg):
    # Threads, seeds, device and the run directory; then the dataset, which carries mc_return, observation statistics
    # and reference scores. Online rewards get the dataset's reward transform; evaluation sees raw rewards, comparable
    # to the reference scores.
    setup = dataset_recipe(cfg)

    # A stochastic actor that scores dataset actions, a single Q network (the loss makes num_qvalue_nets copies), V(s).
    actor, critic, loss = build_actor_critic(cfg, **setup.actor_critic_args(), value=True, gamma=cfg.gamma)
    edis = edis_hook(cfg, actor, **setup.dims, device=setup.device)  # None unless the config has an edis group

    lr = cfg.optim
    optims = loss_optimizers(loss, actor=lr.actor_lr, critic=lr.critic_lr, value=lr.value_lr)
    schedulers = {}
    # CORL's cosine: 0 at T_max = offline steps, then periodic (3e-5 after 0.2 T_max more, the full lr at 2 T_max)
    if cfg.optim.get("actor_lr_schedule", "constant") == "cosine":
        schedulers["actor"] = torch.optim.lr_scheduler.CosineAnnealingLR(optims["actor"], T_max=cfg.offline.steps)
    updater = SoftUpdate(loss, tau=cfg.optim.tau)

    # compile: the loss forward through torch.compile (its backward too); eager by default (compiling takes ~1 min)
    loss_fn = torch.compile(loss) if cfg.get("compile", False) else loss
    trainer = Trainer(
        cfg,
        update=summed_loss_update(loss_fn, optims.values(), updater, schedulers=schedulers.values()),
        run=setup.run,
        checkpoint=training_state(optims, schedulers, loss=loss, updater=updater, edis=edis),  # edis=None: left out
        policy=actor,
        **setup.trainer_data(),  # the dataset, the training env, the evaluation env
        hooks=[] if edis is None else [edis],  # EDIS refits its synthetic pool at the switch, every retrain_every steps
        name="iql" if edis is None else "edis_iql",
    )
    with setup.run:  # closes the logger, also when training stops on an error
        return trainer.run()


if __name__ == "__main__":
    run_recipe(main)
