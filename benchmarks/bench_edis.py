"""Time one EDIS regeneration (fit + pool) at the CPU defaults, unguided and guided, and the paper-size denoiser.

    python benchmarks/bench_edis.py                  # Pendulum-sized transitions (obs 3, action 1), CPU defaults
    python benchmarks/bench_edis.py --obs-dim 11 --action-dim 3 --threads 2

What is timed:
  * an unguided regeneration: ``fit(data)`` = diffusion training + a pool of ``num_samples`` unguided samples;
  * a guided regeneration: ``fit(data, online, policy)`` = the same + InfoNCE training of the three energies (with their
    diffusion negatives) + a guided pool;
  * the pool alone, unguided vs guided (the cost of the energy gradients inside the sampler);
  * the paper-size denoiser (``preset: paper``: 1024 wide, 6 ReLU blocks without LayerNorm): one training step at
    batch 256 and one sampler step (two denoiser evaluations) per 1000 rows, and the paper's regeneration extrapolated
    from them (10k steps, 100k x 128 steps).

The data are synthetic (a random linear system), as only their sizes matter for the timing.
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict import TensorDict

from diffrl import registry
from diffrl.data.edis import PRESETS
from diffrl.diffusion.edm import EDMDenoiser, edm_loss
from diffrl.nn.denoisers import ResidualMLPDenoiser


def linear_system(n: int, obs_dim: int, action_dim: int, shift: float, gen: torch.Generator) -> TensorDict:
    a_mat = torch.randn(obs_dim, obs_dim, generator=torch.Generator().manual_seed(0)) * 0.3
    b_mat = torch.randn(action_dim, obs_dim, generator=torch.Generator().manual_seed(1)) * 0.3
    s = torch.randn(n, obs_dim, generator=gen) + shift
    a = torch.rand(n, action_dim, generator=gen) * 2 - 1
    s_next = s @ a_mat + a @ b_mat
    reward = -s.pow(2).sum(-1, keepdim=True)
    return TensorDict({"observation": s, "action": a, "next": {"observation": s_next, "reward": reward}}, [n])


def timed(fn):
    """Wall-clock seconds and the result; the process CPU seconds of the last call are kept in ``timed.cpu``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    timed.cpu = time.process_time() - cpu
    return time.perf_counter() - start, out


def row(label: str, wall: float, cpu: float) -> None:
    print(f"{label:58s} {wall:8.1f} s wall {cpu:8.1f} s CPU")


def paper_denoiser_timings(dim: int, rows: int = 1000) -> tuple[float, float]:
    """Seconds per training step (batch 256) and per sampler step on ``rows`` rows for the paper-size denoiser."""
    denoiser = EDMDenoiser(ResidualMLPDenoiser(dim, **PRESETS["paper"]["denoiser"]))
    opt = torch.optim.AdamW(denoiser.parameters(), lr=3e-4, betas=PRESETS["paper"]["betas"])
    x = torch.randn(256, dim)

    def train_step():
        loss = edm_loss(denoiser, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_step()
    train, _ = timed(lambda: [train_step() for _ in range(5)])
    y = torch.randn(rows, dim)
    with torch.no_grad():
        denoiser(y, torch.tensor(1.0))
        sample, _ = timed(lambda: [denoiser(y, torch.tensor(1.0)) for _ in range(4)])
    return train / 5, sample / 2  # two evaluations per Heun step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--obs-dim", type=int, default=3)
    parser.add_argument("--action-dim", type=int, default=1)
    parser.add_argument("--num-data", type=int, default=5000, help="offline + online transitions for the diffusion")
    parser.add_argument("--num-online", type=int, default=1000, help="online transitions for the energies")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--skip-paper", action="store_true", help="skip the paper-size denoiser timings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    offline = linear_system(args.num_data - args.num_online, args.obs_dim, args.action_dim, 0.0, gen)
    online = linear_system(args.num_online, args.obs_dim, args.action_dim, 1.0, gen)
    data = torch.cat([offline, online])
    gain = torch.randn(args.obs_dim, args.action_dim, generator=gen) * 0.5

    def policy(obs):
        return (obs @ gain).clamp(-1, 1)

    edis = registry.build("transform", "edis", obs_dim=args.obs_dim, action_dim=args.action_dim)
    cfg = edis.config
    dim = edis.layout.dim
    print(
        f"EDIS CPU defaults: transition dim {dim}, {args.num_data} transitions ({args.num_online} online), "
        f"denoiser {cfg.denoiser}, {cfg.diffusion_steps} diffusion steps, {cfg.num_samples} samples x "
        f"{cfg.sampler_steps} sampler steps, energies {cfg.energy} x {cfg.energy_steps} steps, "
        f"{cfg.energy_positives} positives x {cfg.num_negatives} negatives ({cfg.negative_sampler_steps} steps), "
        f"threads {torch.get_num_threads()}"
    )
    t_plain, _ = timed(lambda: edis.fit(data))
    c_plain = timed.cpu
    t_guided, m_guided = timed(lambda: edis.fit(data, online=online, policy=policy))
    c_guided = timed.cpu
    t_pool_plain, _ = timed(lambda: edis.sample(cfg.num_samples, guided=False))
    c_pool_plain = timed.cpu
    t_pool_guided, _ = timed(lambda: edis.sample(cfg.num_samples, guided=True))
    c_pool_guided = timed.cpu
    print("(CPU = process CPU time summed over threads; on a busy machine it is the steadier number)")
    row("regeneration without guidance: fit(data)", t_plain, c_plain)
    row("regeneration with guidance: fit(data, online, policy)", t_guided, c_guided)
    row("  diffusion training (est.)", t_plain - t_pool_plain, c_plain - c_pool_plain)
    row(
        "  energies: negatives + InfoNCE (est.)",
        t_guided - (t_plain - t_pool_plain) - t_pool_guided,
        c_guided - (c_plain - c_pool_plain) - c_pool_guided,
    )
    row(f"  pool of {cfg.num_samples} unguided samples", t_pool_plain, c_pool_plain)
    row(f"  pool of {cfg.num_samples} guided samples", t_pool_guided, c_pool_guided)
    losses = {k: round(v, 3) for k, v in m_guided.items() if k != "time"}
    print(f"losses: {losses} (InfoNCE chance = ln(11) = 2.398)")
    if not args.skip_paper:
        train_step, sample_step = paper_denoiser_timings(dim)
        params = sum(p.numel() for p in ResidualMLPDenoiser(dim, **PRESETS["paper"]["denoiser"]).parameters()) / 1e6
        print(f"paper-size denoiser (1024 x 6, {params:.1f}M parameters):")
        print(f"{'  training step (batch 256)':58s} {train_step * 1e3:8.1f} ms")
        print(f"{'  sampler step per 1000 rows (2 evaluations)':58s} {sample_step * 1e3:8.1f} ms")
        paper = 10_000 * train_step + 100_000 / 1000 * 128 * sample_step
        print(f"{'  paper regeneration, unguided, extrapolated':58s} {paper / 3600:8.1f} h")


if __name__ == "__main__":
    main()
