"""Update throughput of Diffusion-QL at the paper's sizes, on CPU.

One update is the official order: critic loss, backward, gradient-norm clip, Adam step; actor loss against the updated
critic, backward, clip, Adam step; target updates (critic Polyak every step, EMA actor on its schedule). Sizes:
batch 256, state 17, action 6, T = 5, 3 x 256 Mish networks (actor noise net and both critics), as for hopper/walker.

    python benchmarks/bench_diffusion_ql.py                     # twin_q critic, the library's Mish wiring, 2 threads
    python benchmarks/bench_diffusion_ql.py --mish fast         # diffrl.nn.activations.mish in actor and critics
    python benchmarks/bench_diffusion_ql.py --mish aten         # torch.nn.functional.mish everywhere
    python benchmarks/bench_diffusion_ql.py --critic single     # TorchRL single-Q network duplicated by vmap
    python benchmarks/bench_diffusion_ql.py --compile           # torch.compile the two loss terms
    python benchmarks/bench_diffusion_ql.py --compile --compile-mode max-autotune-no-cudagraphs   # (slower here)
    python benchmarks/bench_diffusion_ql.py --adam foreach      # Adam's multi-tensor path instead of the fused kernel
    python benchmarks/bench_diffusion_ql.py --profile           # where the time goes (torch profiler)
    python benchmarks/bench_diffusion_ql.py --loss-option action_approximation=edp --loss-option precision=bf16
                                                                # DiffusionQLLoss options (the fast departures)

Prints the median updates/s over the repeats (and the range) with the load average, and the updates per CPU-second
of this process (all its threads together). On a shared machine wall-clock numbers depend on the other processes;
with ``--threads 1`` the CPU-time figure approximates the rate on an idle core. Compare variants within one run.

``--mish library`` (default) builds the networks as the library does: the actor's noise network trains with
:func:`diffrl.nn.activations.mish`, the critics with whatever ``diffrl.nn.mlp.ACTIVATIONS["mish"]`` is. ``--mish fast``
and ``--mish aten`` put one implementation in both places before the networks are built.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import warnings

import torch
from tensordict import TensorDict
from timing import measure
from torchrl.modules import MLP, ValueOperator

from diffrl import registry
from diffrl.objectives.updaters import diffusion_ql_updater


def set_mish(choice: str) -> None:
    """Wire one Mish implementation into the noise network's and the MLPs' graph paths (``library``: leave both)."""
    if choice == "library":
        return
    import diffrl.nn.mlp as mlp
    import diffrl.nn.noise_nets as noise_nets
    from diffrl.nn.activations import mish

    chosen = mish if choice == "fast" else torch.nn.functional.mish
    mlp.ACTIVATIONS["mish"] = chosen
    noise_nets.fast_mish = chosen


def build(args: argparse.Namespace):
    actor = registry.build(
        "actor",
        {"name": "diffusion", "hidden_sizes": [args.hidden] * 3, "num_steps": args.steps},
        obs_dim=args.obs,
        action_dim=args.act,
    )
    if args.critic == "twin_q":
        critic = registry.build(
            "critic", {"name": "twin_q", "hidden_sizes": [args.hidden] * 3}, obs_dim=args.obs, action_dim=args.act
        )
    else:
        net = MLP(
            in_features=args.obs + args.act, out_features=1, num_cells=[args.hidden] * 3, activation_class=torch.nn.Mish
        )
        critic = ValueOperator(net, ["observation", "action"])
    options = {"name": "diffusion_ql", "eta": 1.0, **args.loss_options}
    loss = registry.build("loss", options, actor_network=actor, qvalue_network=critic)
    loss.make_value_estimator(gamma=0.99)
    actor_params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    critic_params = [p for p in loss.qvalue_network_params.values(True, True) if p.requires_grad]
    adam = {"lr": 3e-4, args.adam: True}
    optim_actor = torch.optim.Adam(actor_params, **adam)
    optim_critic = torch.optim.Adam(critic_params, **adam)
    updater = diffusion_ql_updater(loss)
    return loss, actor_params, critic_params, optim_actor, optim_critic, updater


def make_batches(args: argparse.Namespace, count: int = 8) -> list[TensorDict]:
    """A few device-resident batches, cycled through (no host copies inside the timed loop)."""
    batches = []
    for _ in range(count):
        b = args.batch
        batches.append(
            TensorDict(
                {
                    "observation": torch.randn(b, args.obs),
                    "action": torch.rand(b, args.act) * 2 - 1,
                    "next": {
                        "observation": torch.randn(b, args.obs),
                        "reward": torch.randn(b, 1),
                        "done": torch.zeros(b, 1, dtype=torch.bool),
                        "terminated": torch.zeros(b, 1, dtype=torch.bool),
                    },
                },
                batch_size=[b],
            )
        )
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs", type=int, default=17)
    parser.add_argument("--act", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="diffusion steps T")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--critic", choices=["twin_q", "single"], default="twin_q")
    parser.add_argument("--mish", choices=["library", "fast", "aten"], default="library")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss terms")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--adam", choices=["fused", "foreach"], default="fused", help="Adam implementation")
    parser.add_argument("--grad-norm", type=float, default=9.0, help="clip norm (<= 0: no clipping)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50, help="updates per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--loss-option", action="append", default=[], metavar="KEY=VALUE", help="DiffusionQLLoss keyword (repeatable)"
    )
    args = parser.parse_args()
    args.loss_options = {}
    for item in args.loss_option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--loss-option takes KEY=VALUE, got {item!r}")
        args.loss_options[key] = int(value) if value.isdigit() else value

    warnings.filterwarnings("ignore", message="No target network updater")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    set_mish(args.mish)
    loss, actor_params, critic_params, optim_actor, optim_critic, updater = build(args)
    qvalue_loss, actor_loss = loss.qvalue_loss, loss.actor_loss
    if args.compile:
        qvalue_loss = torch.compile(qvalue_loss, mode=args.compile_mode)
        actor_loss = torch.compile(actor_loss, mode=args.compile_mode)
    clip = args.grad_norm > 0

    def step(term, optimizer: torch.optim.Optimizer, params: list, batch: TensorDict) -> None:
        value, _ = term(batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, args.grad_norm, foreach=True)
        optimizer.step()

    def update(batch: TensorDict) -> None:
        step(qvalue_loss, optim_critic, critic_params, batch)
        step(actor_loss, optim_actor, actor_params, batch)  # against the critic just updated
        updater.step()

    batches = make_batches(args)
    for i in range(args.warmup):
        update(batches[i % len(batches)])
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.iters):
                update(batches[i % len(batches)])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return
    cycle = itertools.cycle(batches)
    walls, cpus = measure(lambda: update(next(cycle)), args.iters, args.repeats, warmup=0)  # warmed up above
    rates, cpu_rates = [1 / t for t in walls], [1 / t for t in cpus]
    load = os.getloadavg()[0]
    print(
        f"diffusion_ql update (batch {args.batch}, state {args.obs}, action {args.act}, T={args.steps}, "
        f"3x{args.hidden}, critic {args.critic}, mish {args.mish}, compile {args.compile}, adam {args.adam}, "
        f"threads {args.threads}{', ' + str(args.loss_options) if args.loss_options else ''}): "
        f"{statistics.median(rates):.1f} updates/s (range {min(rates):.1f}-{max(rates):.1f}; load avg {load:.2f}); "
        f"{statistics.median(cpu_rates):.1f} updates per CPU-second"
    )


if __name__ == "__main__":
    main()
