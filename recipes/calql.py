"""Cal-QL: calibrated conservative Q-learning pre-trained offline, then fine-tuned online.

Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online Fine-Tuning", NeurIPS 2023, run with
CORL's protocol (``algorithms/finetune/cal_ql.py``):

    pre-train on the dataset: SAC actor + CQL critics whose policy-action values are lifted to max(Q, mc_return)
    switch: calibration off, cql_alpha <- cql_alpha_online
    fine-tune: one env step, then one update on a batch half offline, half online (online mc_return = 0)

    python recipes/calql.py                                   # pendulum, a few minutes on CPU
    python recipes/calql.py config=calql_hopper_medium.yaml   # CORL-scale settings on a Minari dataset
    python recipes/calql.py resume=runs/calql/<run>           # continue a run, in either phase
"""

from __future__ import annotations

import torch
from torchrl.objectives import SoftUpdate

from diffrl import registry
from diffrl.data import load_dataset
from diffrl.train import resolve_device, run_recipe, seed_everything, start_run
from diffrl.train.o2o import O2OHook, OfflineToOnline, o2o_envs, summed_loss_update


def main(cfg):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # small networks on a CPU run fastest on one thread
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = start_run(cfg)

    # Data and envs: the dataset carries mc_return (calibration), observation statistics and reference scores. Online
    # rewards get the dataset's reward transform; evaluation sees raw rewards, comparable to the reference scores.
    rb = load_dataset(**cfg.data, gamma=cfg.gamma, device=device)
    env, eval_env = o2o_envs(
        cfg.env.name, rb, device=device, max_episode_steps=cfg.env.max_episode_steps, seed=cfg.seed
    )

    # Tanh-Gaussian actor within the env's bounds, a single Q network the loss copies num_qvalue_nets times.
    space = env.action_spec.space
    actor = registry.build(
        "actor", cfg.actor, obs_dim=rb.obs_dim, action_dim=rb.action_dim, action_low=space.low, action_high=space.high
    ).to(device)
    critic = registry.build("critic", cfg.critic, obs_dim=rb.obs_dim, action_dim=rb.action_dim).to(device)
    loss = registry.build("loss", cfg.loss, actor_network=actor, qvalue_network=critic)
    loss.make_value_estimator(gamma=cfg.gamma)

    # CORL: the entropy temperature learns at the policy rate, the Lagrange multiplier at the critic rate.
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
    state = {"loss": loss, "updater": updater, **{f"optim_{k}": v for k, v in optims.items()}}
    loop = OfflineToOnline(
        cfg,
        update=update,
        offline_rb=rb,
        env=env,
        eval_env=eval_env,
        policy=actor,
        run=run,
        checkpoint=state,
        hooks=[switch],
        name="calql",
    )
    result = loop.run()
    run.close()
    return result


if __name__ == "__main__":
    run_recipe(main)
