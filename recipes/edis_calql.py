"""Cal-QL + EDIS: Cal-QL fine-tuned online on real online data plus energy-guided synthetic transitions.

Liu et al., "Energy-Guided Diffusion Sampling for Offline-to-Online Reinforcement Learning" (EDIS), ICML 2024, on
Cal-QL (Nakamoto et al., NeurIPS 2023) with CORL's protocol:

    pre-train Cal-QL on the dataset (as recipes/calql.py)
    switch: calibration off, cql_alpha <- cql_alpha_online; fit the transition diffusion model on the dataset
    fine-tune: one env step, then one update on a batch of synthetic_fraction EDIS samples + real online data
               (the offline data is not replayed directly: online.mixing_ratio 0)
    every online.retrain_every env steps: retrain the diffusion model on offline + online data, the energies on the
               online data with the current policy, and regenerate the synthetic pool with energy guidance

    python recipes/edis_calql.py                                             # pendulum, a few minutes on CPU
    python recipes/edis_calql.py edis.synthetic_fraction=0.3 edis.guidance.state=2.0
    python recipes/edis_calql.py config=edis_calql_mujoco_hopper_medium.yaml # the paper's settings (GPU)
    python recipes/edis_calql.py resume=runs/edis_calql/<run>                # continue a run, in either phase
"""

from __future__ import annotations

import torch
from torchrl.objectives import SoftUpdate

from diffrl import registry
from diffrl.data import load_dataset
from diffrl.train import resolve_device, run_recipe, seed_everything, start_run
from diffrl.train.edis_hook import EDISHook, build_edis
from diffrl.train.o2o import O2OHook, OfflineToOnline, o2o_envs, summed_loss_update


def main(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # small networks on a CPU run fastest on one or two threads
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = start_run(cfg)

    # Data and envs: the dataset carries mc_return (calibration), observation statistics and reference scores. Online
    # rewards get the dataset's reward transform; evaluation sees raw rewards, comparable to the reference scores.
    rb = load_dataset(**cfg.data, gamma=cfg.gamma, device=device)
    env, eval_env = o2o_envs(
        cfg.env.name, rb, device=device, max_episode_steps=cfg.env.max_episode_steps, seed=cfg.seed
    )

    # Cal-QL: tanh-Gaussian actor within the env's bounds, one Q network the loss copies num_qvalue_nets times.
    space = env.action_spec.space
    dims = {"obs_dim": rb.obs_dim, "action_dim": rb.action_dim}
    actor = registry.build("actor", cfg.actor, **dims, action_low=space.low, action_high=space.high).to(device)
    critic = registry.build("critic", cfg.critic, **dims).to(device)
    loss = registry.build("loss", cfg.loss, actor_network=actor, qvalue_network=critic)
    loss.make_value_estimator(gamma=cfg.gamma)

    # EDIS: the transition generator whose pool replaces edis.synthetic_fraction of every online batch.
    edis = build_edis(cfg.edis, **dims, device=device, seed=cfg.seed)

    optims = {
        "actor": torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.optim.actor_lr),
        "critic": torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=cfg.optim.critic_lr),
        "alpha": torch.optim.Adam([loss.log_alpha], lr=cfg.optim.actor_lr),
    }
    if cfg.loss.cql_lagrange:
        optims["alpha_prime"] = torch.optim.Adam([loss.log_alpha_prime], lr=cfg.optim.critic_lr)
    updater = SoftUpdate(loss, tau=cfg.optim.tau)

    update = summed_loss_update(loss, optims.values(), updater)

    switch = O2OHook(on_switch=lambda loop: loss.switch_to_online(cfg.online.cql_alpha))
    generator = EDISHook(edis, actor, every=cfg.online.retrain_every, extra_updates=cfg.online.extra_updates)
    loop = OfflineToOnline(
        cfg,
        update=update,
        offline_rb=rb,
        env=env,
        eval_env=eval_env,
        policy=actor,
        run=run,
        checkpoint={
            "loss": loss,
            "updater": updater,
            "edis": generator,
            **{f"optim_{k}": v for k, v in optims.items()},
        },
        hooks=[switch, generator],
        name="edis_calql",
    )
    result = loop.run()
    run.close()
    return result


if __name__ == "__main__":
    run_recipe(main)
