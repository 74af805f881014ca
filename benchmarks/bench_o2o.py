"""Update throughput of the calql, iql and qsm recipes' default updates, variants interleaved in one process.

Each recipe's networks and loss are built from its config file (``recipes/configs/<recipe>.yaml``: the actor, critic,
value and loss groups, the batch size, one torch thread) at Pendulum's sizes (state 3, action 1) with the recipes'
own builders (``diffrl.train.builders``: ``build_actor_critic``, ``loss_optimizers``), and its update is
the recipe's own (``summed_loss_update`` for calql and iql, ``critic_then_actor_update`` for qsm) on one fixed batch.
Variants of the same update:

* ``adam``: ``torch.optim.Adam`` (for-each implementation), eager loss;
* ``fused``: ``torch.optim.Adam(..., fused=True)``, eager loss;
* ``compiled``: fused Adam and the loss run through ``torch.compile`` (the recipes' ``compile: true``).

Repeats alternate between the variants (adam, fused, compiled, adam, ...), so the machine's other load hits each one
alike; the table gives the median updates/s over the repeats and each variant's ratio to ``adam``. Numbers from
different runs (or machines) are not comparable; the ratios within one run are.

    python benchmarks/bench_o2o.py                                  # calql, iql, qsm; adam, fused, compiled
    python benchmarks/bench_o2o.py --recipes calql --variants adam,fused --repeats 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.objectives import SoftUpdate

from diffrl.train.builders import build_actor_critic, loss_optimizers
from diffrl.train.updates import critic_then_actor_update, summed_loss_update

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
OBS_DIM, ACTION_DIM = 3, 1  # Pendulum-v1, the recipes' default env
VARIANTS = ("adam", "fused", "compiled")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_batch(batch: int, generator: torch.Generator) -> TensorDict:
    """A fixed batch with every key the three losses read (actions in [-1, 1], inside every actor's bounds)."""
    return TensorDict(
        {
            "observation": torch.randn(batch, OBS_DIM, generator=generator),
            "action": torch.rand(batch, ACTION_DIM, generator=generator) * 2 - 1,
            "mc_return": torch.randn(batch, 1, generator=generator) * 10,
            ("next", "observation"): torch.randn(batch, OBS_DIM, generator=generator),
            ("next", "reward"): torch.randn(batch, 1, generator=generator),
            ("next", "done"): torch.zeros(batch, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(batch, 1, dtype=torch.bool),
        },
        batch_size=[batch],
    )


def build_update(recipe: str, variant: str, seed: int = 0) -> tuple[Callable[[TensorDict], object], int]:
    """``(update, batch_size)``: the recipe's default update in ``variant`` (see the module docstring)."""
    cfg = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
    torch.manual_seed(seed)
    fused, compile_loss = variant != "adam", variant == "compiled"
    dims = {"obs_dim": OBS_DIM, "action_dim": ACTION_DIM}
    lr = cfg["optim"]
    if recipe == "qsm":  # the recipe's own builders and optimizer groups, as recipes/qsm.py uses them
        _, _, loss = build_actor_critic(cfg, dims)
        optims = loss_optimizers(loss, fused=fused, critic=lr["critic_lr"], actor=lr["actor_lr"])
        update = critic_then_actor_update(
            loss, optims["critic"], optims["actor"], SoftUpdate(loss, tau=lr["tau"]), compile=compile_loss
        )
        return update, cfg["online"]["batch_size"]
    spec = Bounded(low=-1.0, high=1.0, shape=(ACTION_DIM,))
    if recipe == "calql":
        _, _, loss = build_actor_critic(cfg, dims, action_spec=spec, gamma=cfg["gamma"])
        optims = loss_optimizers(loss, fused=fused, actor=lr["actor_lr"], critic=lr["critic_lr"], alpha=lr["actor_lr"])
    elif recipe == "iql":
        _, _, loss = build_actor_critic(cfg, dims, action_spec=spec, value=True, gamma=cfg["gamma"])
        optims = loss_optimizers(loss, fused=fused, actor=lr["actor_lr"], critic=lr["critic_lr"], value=lr["value_lr"])
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose among calql, iql, qsm.")
    loss_fn = torch.compile(loss, fullgraph=False) if compile_loss else loss
    update = summed_loss_update(loss_fn, optims.values(), SoftUpdate(loss, tau=lr["tau"]))
    return update, cfg["data"]["batch_size"]


def interleaved(
    updates: dict[str, Callable[[], object]], iters: int, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Updates/s of every entry, the repeats alternating between entries (one warm-up round each first)."""
    for fn in updates.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {name: [] for name in updates}
    for _ in range(repeats):
        for name, fn in updates.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            rates[name].append(iters / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="calql,iql,qsm", help="comma-separated: calql, iql, qsm")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated among {', '.join(VARIANTS)}")
    parser.add_argument("--iters", type=int, default=20, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5, help="updates per variant before timing (compilation)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the recipes' default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="No target network updater")
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose among {', '.join(VARIANTS)}")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores), torch {torch.__version__}, threads {args.threads}")
    print(f"{args.repeats} interleaved repeats x {args.iters} updates; median updates/s (range), ratio to adam")
    results = {}
    for recipe in (r.strip() for r in args.recipes.split(",")):
        fns = {}
        for variant in variants:
            update, batch_size = build_update(recipe, variant)
            batch = make_batch(batch_size, torch.Generator().manual_seed(1))
            fns[variant] = lambda update=update, batch=batch: update(batch.clone(False))
        rates = interleaved(fns, args.iters, args.repeats, args.warmup)
        medians = {name: statistics.median(r) for name, r in rates.items()}
        base = medians.get("adam")
        for name, r in rates.items():
            ratio = f"  x{medians[name] / base:.2f}" if base else ""
            print(f"{recipe:>6} {name:>9}: {medians[name]:7.1f} updates/s ({min(r):.1f}-{max(r):.1f}){ratio}")
        results[recipe] = medians
    return results


if __name__ == "__main__":
    main()
