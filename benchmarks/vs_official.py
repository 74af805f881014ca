"""diffrl's Diffusion-QL against the official implementation, side by side in one process.

Times, interleaved (every repeat runs each variant once, in turn, so a change of machine load hits all of them):

* ``update``: one training update at the paper's sizes (batch 256, state 17, action 6, T = 5, VP schedule, 3 x 256
  Mish actor noise network and twin critics, Adam 3e-4, gradient-norm clip, critic Polyak 0.005, EMA actor). The
  official agent runs its own ``Diffusion_QL.train`` loop; diffrl runs the update of ``recipes/diffusion_ql.py``
  (``DiffusionQLLoss.qvalue_loss`` / ``actor_loss``, fused Adam, ``diffusion_ql_updater``).
* ``action``: the evaluation action for one observation (50 candidates, min of the twin target critics, softmax
  draw): the official ``Diffusion_QL.sample_action`` against diffrl's ``QSelectionActor.select``, both from a numpy
  observation to a numpy action.

and prints per variant the median rate, and the median of the per-repeat ratios against the official figure, with
the CPU model, its matrix/vector flags, the torch version and the thread count beside them. Only ratios measured in
one run mean anything: on a shared machine absolute figures move with the other processes' load.

Getting the official code (it is not part of diffrl and is never copied into it)::

    git clone https://github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL /path/to/official
    python benchmarks/vs_official.py --official-path /path/to/official
    python benchmarks/vs_official.py --official-path /path/to/official --compile           # + compiled variants
    python benchmarks/vs_official.py --official-path /path/to/official --compile --fast    # + the fast options

The official modules are imported from ``--official-path`` as they are (``agents.ql_diffusion``, which needs only
torch, numpy, ``tabulate`` and ``python-dateutil``; ``d4rl`` and ``gym`` are imported by other files, not needed
here). Both sides use the same batches
(built once, cycled) and the same seeds.

Variants (diffrl): ``eager`` is the faithful update as the recipe runs it with ``compile: false``; ``compiled``
(``--compile``) wraps both loss terms in ``torch.compile`` as ``compile: true`` does; ``fast`` (``--fast``) adds the
documented departures from the paper (``DiffusionQLLoss(action_approximation="edp", target_sampler="ddim",
target_sampler_steps=..., precision=...)``): see that class's docstring. ``--device cuda`` runs both sides on the GPU
(those paths are untested on the machines this script was written on, which have none).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from tensordict import TensorDict

BATCH, OBS, ACT, T, HIDDEN = 256, 17, 6, 5, 256
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def machine_line(device: str) -> str:
    """CPU model, the flags that decide matmul speed, torch version and threads (and the GPU, if used)."""
    model, flags, ident = platform.processor() or "unknown CPU", set(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model in ("unknown CPU", "x86_64", ""):
                    model = value
                elif key in ("cpu family", "model", "stepping", "microcode") and len(ident) < 4:
                    ident.append(f"{key} {value}")
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if ident:
        model += f" ({', '.join(ident)})"
    have = [f for f in _FLAGS if f in flags]
    line = (
        f"CPU: {model}, {os.cpu_count()} logical CPUs, flags: {' '.join(have) or 'none of ' + '/'.join(_FLAGS)}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, load average {os.getloadavg()[0]:.2f}"
    )
    if device.startswith("cuda"):
        line += f"; GPU: {torch.cuda.get_device_name(torch.device(device))}"
    return line


def import_official(path: str):
    """The official ``Diffusion_QL`` class, imported from a checkout at ``path`` (modules left untouched)."""
    if not os.path.isfile(os.path.join(path, "agents", "ql_diffusion.py")):
        raise SystemExit(
            f"--official-path {path!r} has no agents/ql_diffusion.py; pass a checkout of "
            "https://github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL (see this script's docstring)."
        )
    sys.path.insert(0, os.path.abspath(path))
    from agents.ql_diffusion import Diffusion_QL  # noqa: PLC0415 - import by path, on request

    return Diffusion_QL


class CyclingBuffer:
    """The official agent's replay-buffer interface over prebuilt batches (no host work in the timed loop)."""

    def __init__(self, batches: list[TensorDict]) -> None:
        self._tuples = [
            (
                b["observation"],
                b["action"],
                b["next", "observation"],
                b["next", "reward"],
                1.0 - b["next", "terminated"].float(),
            )
            for b in batches
        ]
        self._cycle = itertools.cycle(self._tuples)

    def sample(self, batch_size: int):
        return next(self._cycle)


def make_batches(device: torch.device, count: int = 8) -> list[TensorDict]:
    out = []
    for _ in range(count):
        out.append(
            TensorDict(
                {
                    "observation": torch.randn(BATCH, OBS),
                    "action": torch.rand(BATCH, ACT) * 2 - 1,
                    "next": {
                        "observation": torch.randn(BATCH, OBS),
                        "reward": torch.randn(BATCH, 1),
                        "done": torch.zeros(BATCH, 1, dtype=torch.bool),
                        "terminated": torch.rand(BATCH, 1) < 0.01,
                    },
                },
                batch_size=[BATCH],
            ).to(device)
        )
    return out


def diffrl_update(
    device: torch.device, grad_norm: float, loss_options: dict, compile_terms: bool, compile_mode: str | None
) -> tuple[Callable[[TensorDict], None], object, object, object]:
    """The update of ``recipes/diffusion_ql.py`` at the paper's sizes; returns (update, actor, critic)."""
    from diffrl import registry
    from diffrl.objectives.updaters import diffusion_ql_updater

    actor = registry.build(
        "actor", {"name": "diffusion", "hidden_sizes": [HIDDEN] * 3, "num_steps": T}, obs_dim=OBS, action_dim=ACT
    ).to(device)
    critic = registry.build("critic", {"name": "twin_q", "hidden_sizes": [HIDDEN] * 3}, obs_dim=OBS, action_dim=ACT)
    critic = critic.to(device)
    loss = registry.build(
        "loss", {"name": "diffusion_ql", "eta": 1.0, **loss_options}, actor_network=actor, qvalue_network=critic
    )
    loss.make_value_estimator(gamma=0.99)
    actor_params = [p for p in loss.actor_network_params.values(True, True) if p.requires_grad]
    critic_params = [p for p in loss.qvalue_network_params.values(True, True) if p.requires_grad]
    optim_actor = torch.optim.Adam(actor_params, lr=3e-4, fused=True)
    optim_critic = torch.optim.Adam(critic_params, lr=3e-4, fused=True)
    updater = diffusion_ql_updater(loss)
    qvalue_loss, actor_loss = loss.qvalue_loss, loss.actor_loss
    if compile_terms:
        qvalue_loss = torch.compile(qvalue_loss, mode=compile_mode)
        actor_loss = torch.compile(actor_loss, mode=compile_mode)

    def step(term, optimizer: torch.optim.Optimizer, params: list, batch: TensorDict) -> None:
        value, _ = term(batch)
        optimizer.zero_grad()
        value.backward()
        if grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_norm)
        optimizer.step()

    def update(batch: TensorDict) -> None:
        step(qvalue_loss, optim_critic, critic_params, batch)
        step(actor_loss, optim_actor, actor_params, batch)  # against the critic just updated
        updater.step()

    return update, actor, critic, loss


def matmul_rates(device: torch.device, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of this process's 256 x 256 x 256 matrix product (the networks' hidden layers), fp32 and bf16, best of
    ``repeats``: the ceiling a Diffusion-QL update's matrix products can reach here, at the current load."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b, bias = (torch.randn(*shape, device=device, dtype=dtype) for shape in ((256, 256), (256, 256), (256,)))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(50):
                torch.addmm(bias, a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / 50)
        out[str(dtype).removeprefix("torch.")] = 2 * 256**3 / best / 1e9
    return out


def flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call (``torch.utils.flop_counter``: matrix products only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def interleaved(fns: dict[str, Callable[[], object]], calls: dict[str, int], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every function, one figure per repeat, the functions taking turns within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats):
        # alternate the order too, so no variant always runs right after the same other one
        for name in order if r % 2 == 0 else order[::-1]:
            fn, n = fns[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def report(title: str, times: dict[str, list[float]], unit: str, reference: str) -> None:
    print(f"\n{title}")
    print(f"{'variant':<22}{unit:>14}{'range':>20}{'x official':>12}  (median of per-repeat ratios)")
    ref = times[reference]
    for name, ts in times.items():
        rates = [1 / t for t in ts] if unit == "updates/s" else [t * 1e3 for t in ts]
        ratios = [r / t for r, t in zip(ref, ts)]
        lo, hi = min(rates), max(rates)
        print(
            f"{name:<22}{statistics.median(rates):>14.2f}{f'{lo:.2f}-{hi:.2f}':>20}{statistics.median(ratios):>11.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-path", required=True, help="checkout of the official repository")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both sides")
    parser.add_argument("--compile", action="store_true", help="also time diffrl with torch.compile'd loss terms")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: inductor's default)")
    parser.add_argument("--fast", action="store_true", help="also time diffrl's fast options (departures)")
    parser.add_argument("--fast-precision", default="auto", help="precision of the fast variant: auto, fp32, bf16")
    parser.add_argument("--target-steps", type=int, default=2, help="DDIM steps of the fast variant's critic target")
    parser.add_argument("--cpp-wrapper", action="store_true", help="inductor's C++ wrapper for compiled code")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU paths untested here)")
    parser.add_argument("--grad-norm", type=float, default=9.0, help="clip norm, both sides (halfcheetah-medium: 9)")
    parser.add_argument("--iters", type=int, default=20, help="updates per repeat and variant")
    parser.add_argument("--action-iters", type=int, default=100, help="actions per repeat and variant")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--skip-update", action="store_true")
    parser.add_argument("--skip-action", action="store_true")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch reports no CUDA device here; use --device cpu.")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.cpp_wrapper:
        import torch._inductor.config as inductor_config

        inductor_config.cpp_wrapper = True
    Diffusion_QL = import_official(args.official_path)
    print(machine_line(args.device))

    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - the official agent's coin flip draws from numpy's global generator
    batches = make_batches(device)
    official = Diffusion_QL(
        OBS, ACT, 1.0, device, discount=0.99, tau=0.005, beta_schedule="vp", n_timesteps=T, grad_norm=args.grad_norm
    )
    buffer = CyclingBuffer(batches)
    variants: dict[str, Callable[[TensorDict], None]] = {}
    eager, actor, critic, loss = diffrl_update(device, args.grad_norm, {}, False, None)
    variants["diffrl eager"] = eager
    if args.compile:
        variants["diffrl compiled"] = diffrl_update(device, args.grad_norm, {}, True, args.compile_mode)[0]
    precision = "fp32"
    if args.fast:
        fast = {"action_approximation": "edp", "target_sampler": "ddim", "target_sampler_steps": args.target_steps}
        precision = args.fast_precision
        if precision == "auto":
            from diffrl.modules.diffusion_actor import native_bf16

            precision = "bf16" if native_bf16(device) else "fp32"
        fast["precision"] = precision
        label = f"diffrl fast ({precision})"
        variants[label] = diffrl_update(device, args.grad_norm, fast, args.compile, args.compile_mode)[0]
        print(f"fast options: {fast}, compiled: {args.compile}")

    if not args.skip_update:
        cycle = itertools.cycle(batches)
        fns: dict[str, Callable[[], object]] = {"official": lambda: official.train(buffer, 1, batch_size=BATCH)}
        for name, update in variants.items():
            fns[name] = (lambda u: lambda: u(next(cycle)))(update)
        for fn in fns.values():  # warm-up (and compilation) outside the timed loop
            for _ in range(args.warmup):
                fn()
        times = interleaved(fns, dict.fromkeys(fns, args.iters), args.repeats)
        work = {"faithful": flops(lambda: eager(batches[0]))}
        if args.fast:
            work["fast"] = flops(lambda: variants[label](batches[0]))
        report(
            f"update (batch {BATCH}, state {OBS}, action {ACT}, T={T}, 3x{HIDDEN} Mish, grad clip {args.grad_norm}; "
            f"{args.repeats} repeats x {args.iters} updates)",
            times,
            "updates/s",
            "official",
        )
        rates = matmul_rates(device)
        print(
            f"matrix products per update: {', '.join(f'{k} {v / 1e9:.2f} GFLOP' for k, v in work.items())}; this "
            f"process's 256x256x256 addmm now: {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in rates.items())}; "
            f"so the faithful update's matrix products alone need >= {work['faithful'] / rates['float32'] / 1e6:.1f} "
            f"ms in fp32 (<= {rates['float32'] * 1e9 / work['faithful']:.1f} updates/s)"
        )

    if not args.skip_action:
        from diffrl.modules.q_selection import QSelectionActor

        policy = QSelectionActor(actor, critic, num_candidates=50)
        select = policy.select
        rng = np.random.default_rng(0)
        observations = [rng.standard_normal(OBS).astype(np.float32) for _ in range(16)]
        obs_cycle = itertools.cycle(observations)

        def diffrl_action(select_fn: Callable) -> Callable[[], np.ndarray]:
            def act() -> np.ndarray:
                obs = torch.as_tensor(next(obs_cycle), device=device)
                with torch.inference_mode():
                    return select_fn(obs).cpu().numpy()

            return act

        fns = {
            "official": lambda: official.sample_action(next(obs_cycle)),
            "diffrl eager": diffrl_action(select),
        }
        if args.compile:
            fns["diffrl compiled"] = diffrl_action(torch.compile(select, mode=args.compile_mode))
        if args.fast and precision == "bf16":  # the same selection, candidates sampled under bf16 autocast
            fast_select = QSelectionActor(actor, critic, num_candidates=50, precision="bf16").select
            if args.compile:
                fast_select = torch.compile(fast_select, mode=args.compile_mode)
            fns["diffrl fast (bf16)"] = diffrl_action(fast_select)
        for fn in fns.values():
            for _ in range(args.warmup * 5):
                fn()
        times = interleaved(fns, dict.fromkeys(fns, args.action_iters), args.repeats)
        report(
            f"50-candidate Q-selected action, one observation ({args.repeats} repeats x {args.action_iters} actions)",
            times,
            "ms/action",
            "official",
        )
        with torch.inference_mode():
            work = flops(lambda: select(torch.as_tensor(observations[0], device=device)))
        rate = matmul_rates(device)["float32"]
        print(
            f"matrix products per action: {work / 1e6:.1f} MFLOP; at this process's fp32 256x256x256 rate now "
            f"({rate:.0f} GFLOP/s) >= {work / rate / 1e6:.2f} ms/action"
        )


if __name__ == "__main__":
    main()
