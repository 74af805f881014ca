"""Diffusion-QL: offline RL with a diffusion policy, behaviour cloning plus normalised Q maximisation.

Wang, Hunt and Zhou, "Diffusion Policies as an Expressive Policy Class for Offline Reinforcement Learning", ICLR 2023,
with the official code's update order and defaults (docs/algorithms.md):

    for every step:
        (s, a, r, s') ~ dataset
        critic: y = r + gamma (1 - terminated) min_i Q'_i(s', a' ~ pi_EMA(s'))          (max-Q backup optional)
                minimise sum_i (Q_i(s, a) - y)^2; clip the gradient norm; Adam step
        actor:  a_pi ~ pi_theta(s) through the whole reverse chain, i = coin flip, j = the other critic
                minimise bc(a | s) - eta Q_i(s, a_pi) / mean |Q_j(s, a_pi)|   (against the just-updated critic)
                clip the gradient norm; Adam step
        targets: critic Polyak tau 0.005 every step; EMA actor 0.995 every 5 steps from step 1000
    evaluate: 50 candidates from the online actor, one drawn with softmax over min_i Q'_i (the target critics)

    python recipes/diffusion_ql.py                                      # pendulum, a few minutes on CPU
    python recipes/diffusion_ql.py config=hopper_medium                 # the paper's settings on Minari data
    python recipes/diffusion_ql.py resume=runs/diffusion_ql/<run>       # continue a run
"""

from __future__ import annotations

from diffrl.data import load_dataset
from diffrl.envs import make_env
from diffrl.modules.q_selection import QSelectionActor
from diffrl.objectives.updaters import diffusion_ql_updater
from diffrl.train import normalized_score, run_recipe, seed_env
from diffrl.train.builders import build_actor_critic, loss_optimizers, training_state
from diffrl.train.setup import prepare
from diffrl.train.trainer import Trainer, TrainerSettings
from diffrl.train.updates import critic_then_actor_update


def main(cfg):
    device, run = prepare(cfg)  # threads, seeds, device, the run directory

    # Data and the evaluation env (raw rewards, so returns compare with the dataset's reference scores).
    rb = load_dataset(**cfg.data, gamma=cfg.gamma, device=device)
    eval_env = make_env(
        cfg.env.name,
        from_dataset=rb,
        device=device,
        max_episode_steps=cfg.env.max_episode_steps,
        transform_reward=False,
    )
    seed_env(eval_env, cfg.seed + 100)

    # Diffusion actor within the env's action bounds, twin critics, the loss with its target networks.
    dims = {"obs_dim": rb.obs_dim, "action_dim": rb.action_dim}
    actor, critic, loss = build_actor_critic(cfg, dims, device, action_spec=eval_env.action_spec, gamma=cfg.gamma)
    optims = loss_optimizers(loss, actor=cfg.optim.actor_lr, critic=cfg.optim.critic_lr)  # official critic lr: 3e-4
    updater = diffusion_ql_updater(loss, **cfg.optim.targets)

    # Critic step, then the actor against the critic just updated; one gradient-norm clip for both (per dataset in
    # the paper). compile: each loss term becomes one inductor graph, forward and backward.
    update = critic_then_actor_update(
        loss, optims["critic"], optims["actor"], updater, grad_norm=max(cfg.optim.grad_norm, 0.0), compile=cfg.compile
    )

    # Evaluation policy: the online actor's candidates scored by the target critics.
    select = QSelectionActor(actor, critic, **cfg.eval.selection)

    def policy(td):
        with loss.target_qvalue_network_params.to_module(critic):
            return select(td)

    # Candidates are drawn with noise (a deterministic diffusion sample is a different, degenerate policy).
    settings = TrainerSettings.from_config(cfg, eval_exploration="random")
    trainer = Trainer(
        settings,
        update=update,
        run=run,
        checkpoint=training_state(optims, loss=loss, updater=updater),
        policy=actor,
        eval_policy=policy,
        offline_rb=rb,
        eval_env=eval_env,
        name="diffusion_ql",
        progress_keys=("train/loss_qvalue", "train/bc_loss", "eval/return"),
    )
    result = trainer.run()
    dataset_return = float(rb.episode_returns.mean())
    final = result.get("offline", {})
    if "eval/return" in final:
        line = f"diffusion_ql: final eval/return {final['eval/return']:.1f}"
        if rb.has_reference_scores:
            dataset_score = normalized_score(dataset_return, rb.ref_min_score, rb.ref_max_score)
            line += f" (normalized {final['eval/normalized_score']:.1f})"
        line += f" vs dataset average return {dataset_return:.1f}"
        if rb.has_reference_scores:
            line += f" (normalized {dataset_score:.1f})"
        print(line, flush=True)
    run.close()
    return {**result, "dataset_return": dataset_return}


if __name__ == "__main__":
    run_recipe(main)
