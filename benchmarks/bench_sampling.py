"""Sampling latency and throughput of the diffusion actor (Diffusion-QL network, T = 5, state 17, action 6).

Measures, under ``torch.inference_mode`` (graph-free):

* ``sample50``: one observation, 50 candidate actions (``actor.sample(obs, num_samples=50)``);
* ``select50``: Diffusion-QL's full evaluation action: 50 candidates scored by a twin-Q critic (min of the two), one
  drawn by softmax (``QSelectionActor``);
* ``generic50``: ``sample50`` through the generic model path (no ``bind`` fast path: the whole network, time
  encoder and concatenation included, at every step), i.e. what a straightforward per-step ``model(x_t, t, s)``
  implementation costs on this machine;
* ``batch256``: 256 observations, one action each (actions per second);
* ``batch256_grad``: the same with the graph kept and a backward pass (Diffusion-QL's policy-improvement sample).

Each figure is the median (and min) over ``--repeats`` repeats of the mean over ``--iters`` calls, in wall time and
in process CPU time. Other processes on the machine inflate the wall times; with ``--threads 1`` the CPU time is the
latency of an idle core. Usage::

    python benchmarks/bench_sampling.py                # torch's default thread count
    python benchmarks/bench_sampling.py --threads 1    # single core
    python benchmarks/bench_sampling.py --compile      # torch.compile'd sample / select (inductor fuses each step)

With ``--compile`` the ``sample50``, ``select50`` and ``batch256`` cases call ``torch.compile(actor.sample)`` and
``torch.compile(policy.select)`` (compiled once before timing; ``generic50`` and ``batch256_grad`` stay eager).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch
from tensordict import TensorDict
from timing import measure

from diffrl.diffusion import ddpm
from diffrl.modules.critics import twin_q
from diffrl.modules.diffusion_actor import DiffusionActor
from diffrl.modules.q_selection import QSelectionActor

OBS_DIM, ACTION_DIM, CANDIDATES, BATCH = 17, 6, 50, 256


def timeit(fn: Callable[[], object], iters: int, repeats: int, warmup: int = 20) -> tuple[float, float, float]:
    """Seconds per call: (median wall, min wall, median process CPU) of :func:`timing.measure`'s repeats."""
    walls, cpus = measure(fn, iters, repeats, warmup)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--iters", type=int, default=200, help="calls per repeat for the 50-candidate cases")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="torch.compile actor.sample and policy.select")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    actor = DiffusionActor(OBS_DIM, ACTION_DIM)  # Diffusion-QL network, VP schedule, T = 5
    critic = twin_q(OBS_DIM, ACTION_DIM)
    policy = QSelectionActor(actor, critic, num_candidates=CANDIDATES)
    obs = torch.randn(OBS_DIM)
    obs_batch = torch.randn(BATCH, OBS_DIM)
    td = TensorDict({"observation": obs}, batch_size=[])
    generic = lambda x, t, s: actor.network(x, t, s)  # noqa: E731 - hides the bind fast path

    def generic50() -> torch.Tensor:
        return ddpm.sample_diffusion_ql(generic, actor.schedule, obs.unsqueeze(-2), (CANDIDATES, ACTION_DIM))

    sample, select = actor.sample, policy.select
    if args.compile:
        sample, select = torch.compile(sample), torch.compile(select)

    def grad256() -> None:
        actor.sample(obs_batch, grad=True).sum().backward()

    load = os.getloadavg()[0]
    rows = []
    with torch.inference_mode():
        rows.append(("sample50", *timeit(lambda: sample(obs, num_samples=CANDIDATES), args.iters, args.repeats)))
        if args.compile:
            rows.append(("select50", *timeit(lambda: select(obs), args.iters, args.repeats)))
        else:  # the module call a collector makes (TensorDict in and out)
            rows.append(("select50", *timeit(lambda: policy(td.clone()), args.iters, args.repeats)))
        rows.append(("generic50", *timeit(generic50, args.iters // 2, args.repeats)))
        rows.append(("batch256", *timeit(lambda: sample(obs_batch), args.iters // 4, args.repeats)))
    rows.append(("batch256_grad", *timeit(grad256, args.iters // 10, args.repeats, warmup=3)))

    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, compile={args.compile}, T={actor.num_steps}, "
        f"state {OBS_DIM}, action {ACTION_DIM}, candidates {CANDIDATES}, batch {BATCH}"
    )
    print(f"load average (1 min) before the run: {load:.2f}")
    print(f"{'case':<15}{'median ms':>11}{'min ms':>9}{'cpu ms':>9}  throughput (median wall)")
    for name, median, best, cpu in rows:
        if name.startswith("batch"):
            extra = f"{BATCH / median:,.0f} actions/s"
        else:
            extra = f"{1 / median:,.0f} decisions/s"
        print(f"{name:<15}{median * 1e3:>11.3f}{best * 1e3:>9.3f}{cpu * 1e3:>9.3f}  {extra}")


if __name__ == "__main__":
    main()
