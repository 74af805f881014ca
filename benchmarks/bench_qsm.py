"""Q-Score Matching on CPU: update throughput at the paper's sizes and the per-step action latency of collection.

Sizes (defaults): batch 256, state 17, action 6 (HalfCheetah-v5), T = 5, QSM's noise network (Fourier time features
-> 128-128 Mish, trunk 512-512 Mish) and two 512-512 ReLU critics (``twin_q``), as recipes/configs/qsm/halfcheetah.yaml.

* ``update``: the recipe's update, in the official order: critic TD(0) loss (target actions sampled through the
  5-step chain), backward, Adam step; actor score-matching loss against the updated critic (grad_a of the critics'
  mean at noised replay actions), backward, Adam step, cosine lr schedule step; Polyak update of the target critics.
  Updates per second, once per thread count in ``--threads`` (default 1 and 2).
* ``policy``: one exploration action for one observation (the 5-step stochastic chain plus TorchRL's
  ``AdditiveGaussianModule``), the policy call inside every collection step, in ms.
* ``env step``: one step of a direct TorchRL ``Collector`` (``frames_per_batch=1``) on HalfCheetah-v5 with uniformly
  random actions (the environment and collector overhead alone), and with the diffusion policy (what an env step costs
  during QSM's collection), in ms.

Each figure is the median over ``--repeats`` repeats of the mean over ``--iters`` calls (the range in brackets), and
the rate per process-CPU-second: on a shared machine wall-clock numbers include time other processes hold the cores,
so with one thread the CPU figure approximates an idle core. ``uptime``'s load average is printed with the table.

    python benchmarks/bench_qsm.py                          # paper sizes, 1 and 2 threads
    python benchmarks/bench_qsm.py --threads 1 --hidden 256 --time-hidden 64 --env Pendulum-v1   # the default recipe
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import warnings

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from timing import measure
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import SoftUpdate

from diffrl import registry
from diffrl.train.collectors import make_collector, make_env_fn


def build(args: argparse.Namespace, obs_dim: int, action_dim: int):
    """Actor, critic, loss, optimizers, lr schedule and target updater, as recipes/qsm.py builds them."""
    actor = registry.build(
        "actor",
        {
            "name": "diffusion",
            "network": "qsm",
            "sampler": "qsm",
            "num_steps": args.steps,
            "hidden_sizes": [args.hidden] * 2,
            "network_kwargs": {"time_hidden": [args.time_hidden] * 2},
        },
        obs_dim=obs_dim,
        action_dim=action_dim,
    )
    critic = registry.build(
        "critic",
        {"name": "twin_q", "hidden_sizes": [args.critic_hidden] * 2, "activation": "relu"},
        obs_dim=obs_dim,
        action_dim=action_dim,
    )
    loss = registry.build("loss", {"name": "qsm", "gamma": 0.99}, actor_network=actor, qvalue_network=critic)
    actor_optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
    critic_optim = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=3e-4)
    decay = 2_000_000
    schedule = torch.optim.lr_scheduler.LambdaLR(
        actor_optim, lambda u: 0.5 * (1 + math.cos(math.pi * min(u, decay) / decay))
    )
    return actor, loss, actor_optim, critic_optim, schedule, SoftUpdate(loss, tau=0.005)


def make_batches(batch: int, obs_dim: int, action_dim: int, count: int = 8) -> list[TensorDict]:
    """A few replay-like batches, cycled through (no sampling or host copies inside the timed loop)."""
    return [
        TensorDict(
            {
                "observation": torch.randn(batch, obs_dim),
                "action": torch.rand(batch, action_dim) * 2 - 1,
                ("next", "observation"): torch.randn(batch, obs_dim),
                ("next", "reward"): torch.randn(batch, 1),
                ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
                ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
            },
            [batch],
        )
        for _ in range(count)
    ]


def row(name: str, walls: list[float], cpus: list[float], unit: str) -> str:
    """A table row: rate (updates/s) or latency (ms), median and range over repeats, and per CPU-second."""
    if unit == "updates/s":
        values, cpu = sorted(1 / w for w in walls), 1 / statistics.median(cpus)
        return (
            f"{name:<46} {statistics.median(values):9.1f} {unit:<10} [{values[0]:.1f}-{values[-1]:.1f}]"
            f"   {cpu:9.1f} per CPU-s"
        )
    values, cpu = sorted(1e3 * w for w in walls), 1e3 * statistics.median(cpus)
    return (
        f"{name:<46} {statistics.median(values):9.2f} {unit:<10} [{values[0]:.2f}-{values[-1]:.2f}]   {cpu:9.2f} CPU-ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs", type=int, default=17, help="state size of the update benchmark")
    parser.add_argument("--act", type=int, default=6, help="action size of the update benchmark")
    parser.add_argument("--steps", type=int, default=5, help="diffusion steps T")
    parser.add_argument("--hidden", type=int, default=512, help="actor trunk width (2 layers)")
    parser.add_argument("--time-hidden", type=int, default=128, help="actor time-MLP width (2 layers)")
    parser.add_argument("--critic-hidden", type=int, default=512, help="critic width (2 layers)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the update benchmark")
    parser.add_argument("--env", default="HalfCheetah-v5", help="gymnasium id of the collection benchmark")
    parser.add_argument("--iters", type=int, default=20, help="calls per repeat (updates); x10 for latencies")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # TorchRL's InitTracker notice on collectors

    lines = []
    torch.manual_seed(0)
    actor, loss, actor_optim, critic_optim, schedule, updater = build(args, args.obs, args.act)
    batches = make_batches(args.batch, args.obs, args.act)
    counter = iter(range(10**9))

    def update() -> None:
        batch = batches[next(counter) % len(batches)]
        value, _ = loss.qvalue_loss(batch)
        critic_optim.zero_grad(set_to_none=True)
        value.backward()
        critic_optim.step()
        value, _ = loss.actor_loss(batch)
        actor_optim.zero_grad(set_to_none=True)
        value.backward()
        actor_optim.step()
        schedule.step()
        updater.step()

    for threads in args.threads:
        torch.set_num_threads(threads)
        walls, cpus = measure(update, args.iters, args.repeats, args.warmup)
        lines.append(row(f"update, {threads} thread(s)", walls, cpus, "updates/s"))

    # Collection: one thread (the recipe's default), the env's own sizes.
    torch.set_num_threads(1)
    env_fn = make_env_fn(args.env, seed=0)
    env = env_fn()
    obs_dim, action_dim = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    actor, *_ = build(args, obs_dim, action_dim)
    policy = TensorDictSequential(actor, AdditiveGaussianModule(env.action_spec, sigma_init=0.1, sigma_end=0.1))
    observation = TensorDict({"observation": torch.randn(obs_dim)}, [])

    def act() -> None:
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            policy(observation.clone())

    walls, cpus = measure(act, 10 * args.iters, args.repeats, args.warmup)
    lines.append(row(f"policy, 1 obs ({obs_dim}->{action_dim})", walls, cpus, "ms"))
    for name, random_frames in (("random actions", 10**9), ("diffusion policy", 0)):
        total = (args.warmup + 10 * args.iters * args.repeats) * 2
        collector = make_collector(
            {"frames_per_batch": 1}, env_fn, policy, total_frames=total, init_random_frames=random_frames, seed=0
        )
        batches_iter = iter(collector)
        try:
            walls, cpus = measure(lambda it=batches_iter: next(it), 10 * args.iters, args.repeats, args.warmup)
        finally:
            collector.shutdown()
        lines.append(row(f"env step, {args.env}, {name}", walls, cpus, "ms"))

    load = os.getloadavg()
    print(
        f"QSM on CPU: batch {args.batch}, state {args.obs}, action {args.act}, T={args.steps}, actor "
        f"{args.hidden}x2 (time {args.time_hidden}x2), critics 2 x {args.critic_hidden}x2; torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'':<46} {'median':>9} {'':<10} [range over {args.repeats} repeats]")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
