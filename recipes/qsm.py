"""Q-Score Matching: an online, off-policy diffusion policy trained by matching its noise prediction to grad_a Q.

Psenka, Escontrela, Abbeel and Ma, "Learning a Diffusion Model Policy from Rewards via Q-Score Matching", ICML 2024:

    collect random_steps transitions with uniformly random actions
    for every env step (a ~ pi(s) + N(0, 0.1^2), clipped; stored in the replay buffer):
        utd_ratio times: sample a batch (s, a, r, s', terminated)
            critic: y = r + gamma (1 - terminated) min_i Q'_i(s', clip(pi(s') + N(0, 0.1^2)));  Q_i <- y
            actor:  a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps;  eps_theta(a_t, t, s) <- -M_q mean_i grad_a Q_i(s, a_t)
            target critics <- Polyak(tau)

    python recipes/qsm.py                                  # Pendulum-v1, a few minutes on CPU
    python recipes/qsm.py config=qsm_hopper.yaml           # the paper's settings on Hopper-v5
    python recipes/qsm.py collector.num_workers=2          # TorchRL's multi-process collector
    python recipes/qsm.py collector.backend=ray collector.num_workers=2   # TorchRL's Ray collector
    python recipes/qsm.py resume=runs/qsm/<run>            # continue a run (the env restarts a fresh episode)
"""

from __future__ import annotations

import math

import torch
from tensordict.nn import TensorDictSequential
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import SoftUpdate

from diffrl import registry
from diffrl.train import (
    Timer,
    evaluate,
    format_summary,
    make_progress,
    resolve_device,
    run_recipe,
    seed_everything,
    start_run,
)
from diffrl.train.collectors import EpisodeTracker, make_collector, make_env_fn
from diffrl.train.replay import StoredItems, make_online_buffer


def main(cfg):
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # small networks on a CPU run fastest on one or two threads
    seed_everything(cfg.seed)
    run = start_run(cfg)

    # Envs act in [-1, 1]^A (ActionScaling); training rewards are scaled, evaluation reports raw returns.
    env_options = {"max_episode_steps": cfg.env.max_episode_steps, "keep_raw_reward": True}
    env_fn = make_env_fn(cfg.env.name, reward_scale=cfg.env.reward_scale, **env_options)
    eval_env = make_env_fn(cfg.env.name, transform_reward=False, seed=cfg.seed + 10_000, **env_options)()
    dims = {"obs_dim": eval_env.observation_spec["observation"].shape[-1], "action_dim": eval_env.action_spec.shape[-1]}

    # Networks and loss: a diffusion actor, an ensemble of critics, QSM's score-matching and TD(0) terms.
    actor = registry.build("actor", cfg.actor, **dims).to(device)
    critic = registry.build("critic", cfg.critic, **dims).to(device)
    loss = registry.build("loss", cfg.loss, actor_network=actor, qvalue_network=critic)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=cfg.optim.actor_lr)
    critic_optim = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=cfg.optim.critic_lr)
    decay = cfg.optim.actor_lr_decay_steps  # cosine to 0 over `decay` updates, then 0 (optax's cosine_decay_schedule)
    actor_schedule = torch.optim.lr_scheduler.LambdaLR(
        actor_optim, lambda u: 0.5 * (1 + math.cos(math.pi * min(u, decay) / decay)) if decay > 0 else 1.0
    )
    updater = SoftUpdate(loss, tau=cfg.optim.tau)

    # Exploration: the stochastic sampler plus clipped Gaussian noise; the buffer keeps what the loss reads.
    exploration_policy = TensorDictSequential(
        actor,
        AdditiveGaussianModule(
            eval_env.action_spec, sigma_init=cfg.online.exploration_noise, sigma_end=cfg.online.exploration_noise
        ),
    )
    rb = make_online_buffer(cfg.online.buffer_size, device)
    episodes = EpisodeTracker(reward_key=("next", "raw_reward"))
    state = {
        "loss": loss,
        "actor_optim": actor_optim,
        "critic_optim": critic_optim,
        "actor_schedule": actor_schedule,
        "updater": updater,
        "rb": StoredItems(rb),
        "episodes": episodes,
        "eval_env": eval_env,
    }
    step = run.resume(**state)
    counters = run.resumed.get("counters", {"updates": 0, "credit": 0.0})
    updates, credit = counters["updates"], counters["credit"]

    collector = make_collector(
        cfg.collector,
        env_fn,
        exploration_policy,
        total_frames=cfg.online.steps - step,
        init_random_frames=cfg.online.random_steps - step,
        device=device,
        seed=cfg.seed + step,
    )  # a resumed run does not replay the first run's episodes
    bar = make_progress(cfg.online.steps, "qsm", initial=step, keys=["loss_qvalue", "loss_actor", "eval/return"])
    timer, start, metrics = Timer(), step, {}

    def checkpoint():
        run.save(step, **state, counters={"updates": updates, "credit": credit})

    try:
        for data in collector:
            before, step = step, step + data.numel()
            for ret, length in episodes.update(data):
                run.log({"train/episode_return": ret, "train/episode_length": length}, step)
            rb.extend(data.reshape(-1).select(*loss.in_keys).to(device))
            if step > cfg.online.random_steps:
                credit += data.numel() * cfg.online.utd_ratio
            while credit >= 1.0:
                batch = rb.sample(cfg.online.batch_size).to(device)
                # The official order: critic step on the batch, then the actor against the updated critic.
                loss_qvalue, q_info = loss.qvalue_loss(batch)
                critic_optim.zero_grad()
                loss_qvalue.backward()
                critic_optim.step()
                loss_actor, actor_info = loss.actor_loss(batch)
                actor_optim.zero_grad()
                loss_actor.backward()
                actor_optim.step()
                actor_schedule.step()
                updater.step()
                updates, credit = updates + 1, credit - 1.0
                q_info.pop("td_error")
                metrics = {
                    "loss_qvalue": loss_qvalue.item(),
                    "loss_actor": loss_actor.item(),
                    **{k: v.item() for k, v in (q_info | actor_info).items()},
                }
            collector.update_policy_weights_()  # workers in other processes act with the new weights
            bar.update(data.numel(), metrics)
            if metrics and step // cfg.logger.log_every > before // cfg.logger.log_every:
                run.log(
                    {
                        **{f"train/{k}": v for k, v in metrics.items()},
                        "train/updates": updates,
                        "train/actor_lr": actor_schedule.get_last_lr()[0],
                    },
                    step,
                )
            if step // cfg.eval.every > before // cfg.eval.every or step >= cfg.online.steps:
                result = evaluate(eval_env, actor, cfg.eval.episodes, exploration=cfg.eval.exploration)
                run.log(result, step)
                bar.update(0, result)
                checkpoint()
            if step >= cfg.online.steps:
                break
    finally:
        collector.shutdown()
        bar.close()

    seconds = timer.elapsed
    print(format_summary("qsm", step - start, seconds, run.logger.last), flush=True)
    run.close()
    return {"steps": step, "updates": updates, "seconds": seconds, **run.logger.last}


if __name__ == "__main__":
    run_recipe(main)
