"""The 2D bandit of Diffusion-QL (Wang et al., ICLR 2023, section 5.1): what each policy class does with 4 modes.

One fixed state; behaviour actions from four Gaussians at (+-0.8, +-0.8) with rewards of mean 3, 0, 1.5 and 5 (the best
at (+0.8, -0.8)); see ``diffrl.data.toy``. Three policies are trained on the same data:

    Gaussian BC:   maximise log pi(a | s) for a tanh-Gaussian pi          -> one blob that averages the modes
    diffusion BC:  the denoising loss of a diffusion policy               -> all four modes
    Diffusion-QL:  denoising loss + eta * normalised Q term; the critics regress the reward (one-step episodes)
                                                                          -> the reward-5 mode only

Each policy then draws ``eval.samples`` actions; the recipe saves a PNG like the paper's figure (data coloured by
reward, then one panel per policy) and logs, per policy, the fraction of samples in each mode's quadrant
(``|x| > 0.4`` and ``|y| > 0.4`` on the mode's side) and in none of them.

    python recipes/bandit2d.py                             # the paper's T = 50 (a few minutes on CPU)
    python recipes/bandit2d.py config=fast                 # T = 5 and shorter training (well under a minute)
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from diffrl import registry
from diffrl.data.toy import BANDIT_MODES, BANDIT_REWARD_MEANS, bandit_replay_buffer
from diffrl.objectives.updaters import diffusion_ql_updater
from diffrl.train import format_summary, run_recipe
from diffrl.train.builders import training_state
from diffrl.train.progress import Timer
from diffrl.train.setup import prepare
from diffrl.train.trainer import Trainer
from diffrl.train.updates import critic_then_actor_update

QUADRANT_EDGE = 0.4  # a sample belongs to a mode when it lies beyond 0.4 on both axes, on the mode's side


def quadrant_fractions(actions: torch.Tensor) -> dict[str, float]:
    """Fraction of ``actions`` [N, 2] in each mode's quadrant (named by the mode's mean reward), and elsewhere."""
    out = {}
    inside = torch.zeros(actions.shape[0], dtype=torch.bool)
    for mode, reward in zip(BANDIT_MODES, BANDIT_REWARD_MEANS):
        hit = ((actions * mode.sign()) > QUADRANT_EDGE).all(-1)
        inside |= hit
        out[f"reward_{reward:g}"] = hit.float().mean().item()
    out["elsewhere"] = (~inside).float().mean().item()
    return out


def main(cfg):
    device, run = prepare(cfg)  # threads, seeds, device, the run directory
    timer = Timer()
    rb = bandit_replay_buffer(**cfg.data, device=device, seed=cfg.seed)
    dims = {"obs_dim": rb.obs_dim, "action_dim": rb.action_dim}

    # The three policies and their losses.
    gaussian = registry.build("actor", cfg.gaussian_actor, **dims).to(device)
    diffusion_bc = registry.build("actor", cfg.actor, **dims).to(device)
    diffusion_ql = registry.build("actor", cfg.actor, **dims).to(device)
    critic = registry.build("critic", cfg.critic, **dims).to(device)
    bc_loss = registry.build("loss", "diffusion_bc", actor_network=diffusion_bc)
    ql_loss = registry.build("loss", cfg.loss, actor_network=diffusion_ql, qvalue_network=critic)
    ql_loss.make_value_estimator(gamma=cfg.gamma)  # every transition terminates: the critic target is the reward
    optims = {
        "gaussian": torch.optim.Adam(gaussian.parameters(), lr=cfg.optim.lr),
        "diffusion_bc": torch.optim.Adam(bc_loss.actor_network_params.values(True, True), lr=cfg.optim.lr),
        "critic": torch.optim.Adam(ql_loss.qvalue_network_params.values(True, True), lr=cfg.optim.lr),
        "diffusion_ql": torch.optim.Adam(ql_loss.actor_network_params.values(True, True), lr=cfg.optim.lr),
    }
    updater = diffusion_ql_updater(ql_loss)

    def step(optim, value):
        optim.zero_grad()
        value.backward()
        optim.step()

    def update(batch):
        # Gaussian BC: negative log-likelihood (actions pulled inside the open interval the tanh reaches)
        inner = batch["action"].clamp(-1 + 1e-3, 1 - 1e-3)
        gaussian_nll = -gaussian.get_dist(batch).log_prob(inner).mean()
        step(optims["gaussian"], gaussian_nll)
        # Diffusion BC
        step(optims["diffusion_bc"], bc_loss(batch)["loss_actor"])
        # Diffusion-QL: critic step, then the actor against the updated critic, then the targets
        return {"gaussian_nll": gaussian_nll.detach(), **diffusion_ql_update(batch)}

    diffusion_ql_update = critic_then_actor_update(ql_loss, optims["critic"], optims["diffusion_ql"], updater)
    trainer = Trainer(
        cfg,
        update=update,
        run=run,
        checkpoint=training_state(optims, gaussian=gaussian, bc_loss=bc_loss, ql_loss=ql_loss, updater=updater),
        policy=diffusion_ql,
        offline_rb=rb,
        name="bandit2d",
        progress_keys=["train/gaussian_nll", "train/bc_loss", "train/loss_qvalue", "train/q_term"],
        verbose=False,
    )
    trainer.run()

    # Sample each policy at the fixed state and measure where the samples land.
    state = torch.zeros(cfg.eval.samples, rb.obs_dim, device=device)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        samples = {
            "Gaussian BC": gaussian(TensorDict({"observation": state}, batch_size=[cfg.eval.samples]))["action"],
            "Diffusion BC": diffusion_bc.sample(state),
            "Diffusion-QL": diffusion_ql.sample(state),
        }
    fractions = {name: quadrant_fractions(actions.cpu()) for name, actions in samples.items()}
    for name, fraction in fractions.items():
        tag = name.lower().replace(" ", "_").replace("-", "_")
        run.log({f"eval/{tag}/{k}": v for k, v in fraction.items()}, cfg.offline.steps)
    figure = run.dir / "bandit2d.png"
    plot_bandit(rb.transitions, samples, figure)
    for name, fraction in fractions.items():
        print(f"{name:13s} " + "  ".join(f"{k} {v:.2f}" for k, v in fraction.items()), flush=True)
    print(format_summary("bandit2d", cfg.offline.steps, timer.elapsed) + f" | figure {figure}", flush=True)
    run.close()
    return {"fractions": fractions, "figure": str(figure)}


def plot_bandit(data, samples: dict[str, torch.Tensor], path) -> None:
    """The paper's figure: the behaviour data coloured by mode reward, then each policy's samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(samples), figsize=(4.2 * (1 + len(samples)), 4.2))
    actions, modes = data["action"].cpu(), data["mode"].cpu()
    for mode, reward in enumerate(BANDIT_REWARD_MEANS.tolist()):
        shown = actions[modes == mode][:300]
        axes[0].scatter(shown[:, 0], shown[:, 1], s=6, alpha=0.5, label=f"r ~ N({reward:g}, 0.5)")
    axes[0].set_title("behaviour data")
    axes[0].legend(loc="center", fontsize=8)
    for ax, (name, actions) in zip(axes[1:], samples.items()):
        actions = actions.cpu()
        ax.scatter(actions[:, 0], actions[:, 1], s=6, alpha=0.4, color="tab:red")
        ax.set_title(name)
    for ax in axes:
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_aspect("equal")
        ax.set_xlabel("a1")
    axes[0].set_ylabel("a2")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    run_recipe(main)
