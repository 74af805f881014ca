"""Schedules, forward noising, the epsilon loss and the three reverse samplers of diffrl.diffusion."""

from __future__ import annotations

import math

import pytest
import torch

from diffrl.diffusion import ddpm
from diffrl.diffusion.schedules import DiffusionSchedule, make_betas

# Gaussian target x0 ~ N(MU, S^2) per dimension: its exact noise predictor is known in closed form.
MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
S = torch.tensor([0.2, 0.4], dtype=torch.float64)


def exact_eps(schedule: DiffusionSchedule):
    """eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).

    The samplers query one step at a time (t is constant over the batch), so the coefficients are computed per step
    in float64 and applied with two float32 ops: the 1000-step tests stay fast.
    """
    abar = torch.tensor(schedule.floats["alphas_cumprod"], dtype=torch.float64)
    gain = (1 - abar).sqrt()[:, None] / (abar[:, None] * S**2 + 1 - abar[:, None])
    offset = (gain * abar.sqrt()[:, None] * MU).float()
    gain = gain.float()

    def model(x, t, condition):
        i = int(t.reshape(-1)[0])
        assert bool((t == i).all())
        return torch.addcmul(-offset[i], x, gain[i])

    return model


def chain_moments(sampler: str, betas: torch.Tensor, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of a sampler driven by the exact eps of the Gaussian target, propagated in closed form.

    With eps affine in x_t, every step is x' = A x + B + C z; the formulas are those of docs/algorithms.md section 1.4.
    """
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    mean, var = torch.zeros_like(MU), torch.ones_like(MU)
    descending = steps[::-1]
    for k, i in enumerate(descending):
        ab = abar[i]
        ab_prev = abar[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        g = (1 - ab).sqrt() / (ab * S**2 + 1 - ab)  # eps = g x - g sqrt(ab) mu
        e1, e0 = g, -g * ab.sqrt() * MU
        if sampler == "diffusion_ql":
            p1, p0 = (1 - (1 - ab).sqrt() * e1) / ab.sqrt(), -(1 - ab).sqrt() * e0 / ab.sqrt()  # x0_hat
            c1 = betas[i] * ab_prev.sqrt() / (1 - ab)
            c2 = (1 - ab_prev) * alphas[i].sqrt() / (1 - ab)
            a_, b_ = c1 * p1 + c2, c1 * p0
            noise_var = betas[i] * (1 - ab_prev) / (1 - ab) if i > 0 else 0.0
        elif sampler == "qsm":
            coef = betas[i] / (1 - ab).sqrt()
            a_, b_ = (1 - coef * e1) / alphas[i].sqrt(), -coef * e0 / alphas[i].sqrt()
            noise_var = betas[i] if i > 0 else 0.0
        else:  # ddim, eta = 0, on the subsequence `steps`
            ab_prev = abar[descending[k + 1]] if k + 1 < len(descending) else torch.tensor(1.0, dtype=torch.float64)
            p1, p0 = (1 - (1 - ab).sqrt() * e1) / ab.sqrt(), -(1 - ab).sqrt() * e0 / ab.sqrt()
            a_ = ab_prev.sqrt() * p1 + (1 - ab_prev).sqrt() * e1
            b_ = ab_prev.sqrt() * p0 + (1 - ab_prev).sqrt() * e0
            noise_var = 0.0
        mean, var = a_ * mean + b_, a_**2 * var + noise_var
    return mean, var.sqrt()


def test_vp_schedule_values_match_the_papers():
    sched = DiffusionSchedule.from_name("vp", 5)
    assert sched.betas.tolist() == pytest.approx([0.1959, 0.4588, 0.6358, 0.7549, 0.8350], abs=1e-4)
    assert sched.alphas_cumprod.tolist() == pytest.approx([0.8041, 0.4352, 0.1585, 0.0389, 0.0064], abs=1e-4)
    # posterior: zero variance at step 0, log clamped at 1e-20, coefficients of x0 and x_t
    assert sched.posterior_variance[0].item() == 0.0
    assert sched.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(1e-20))
    b, ab = sched.floats["betas"], sched.floats["alphas_cumprod"]
    assert sched.floats["posterior_variance"][3] == pytest.approx(b[3] * (1 - ab[2]) / (1 - ab[3]))
    assert sched.floats["posterior_mean_coef1"][2] == pytest.approx(b[2] * ab[1] ** 0.5 / (1 - ab[2]))
    assert sched.floats["posterior_mean_coef2"][2] == pytest.approx((1 - ab[1]) * (1 - b[2]) ** 0.5 / (1 - ab[2]))


def test_linear_and_cosine_schedules():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(2e-2)
    cosine = DiffusionSchedule.from_name("cosine", 50)
    # alpha_bar follows cos^2(((t/T) + s)/(1 + s) pi/2) normalised at t = 0
    f = lambda t: math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine.floats["alphas_cumprod"][9] == pytest.approx(f(10) / f(0), rel=1e-6)
    assert max(cosine.floats["betas"]) <= 0.999
    with pytest.raises(ValueError, match="unknown diffusion schedule 'cosin'"):
        make_betas("cosin", 5)
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        make_betas("vp", 0)


def test_q_sample_and_epsilon_loss_are_per_sample():
    sched = DiffusionSchedule.from_name("vp", 5)
    x0, noise = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    t = torch.randint(0, 5, (3, 4))
    x_t = ddpm.q_sample(sched, x0, t, noise)
    ab = sched.alphas_cumprod[t].unsqueeze(-1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # a model that returns the true noise has zero loss; an off-by-one in t would not
    oracle = lambda x, t_, c: (
        (x - sched.sqrt_alphas_cumprod[t_].unsqueeze(-1) * x0)
        / (  # noqa: E731
            sched.sqrt_one_minus_alphas_cumprod[t_].unsqueeze(-1)
        )
    )
    loss = ddpm.epsilon_loss(oracle, sched, x0, None, t=t, noise=noise)
    assert loss.shape == (3, 4) and loss.abs().max() < 1e-8
    shifted = lambda x, t_, c: oracle(x, (t_ + 1).clamp(max=4), c)  # noqa: E731
    assert ddpm.epsilon_loss(shifted, sched, x0, None, t=t, noise=noise).mean() > 1e-3


@pytest.mark.parametrize(
    "sampler, kwargs, steps",
    [
        ("diffusion_ql", {}, list(range(5))),
        ("qsm", {}, list(range(5))),
        ("ddim", {"num_inference_steps": 3}, [0, 2, 4]),
    ],
)
def test_sampler_statistics_match_the_closed_form_chain(sampler, kwargs, steps):
    """T = 5: every coefficient of the chain matters; sample moments match the exact Gaussian propagation."""
    torch.manual_seed(0)
    sched = DiffusionSchedule.from_name("vp", 5)
    x = ddpm.sample(exact_eps(sched), sched, None, (200_000, 2), sampler=sampler, low=None, high=None, **kwargs)
    mean, std = chain_moments(sampler, torch.tensor(sched.floats["betas"], dtype=torch.float64), steps)
    n = x.shape[0]
    assert (x.double().mean(0) - mean).abs().max() < 4 * std.max() / n**0.5
    assert ((x.double().std(0) - std).abs() / std).max() < 0.01


@pytest.mark.parametrize(
    "sampler, kwargs",
    [("diffusion_ql", {}), ("qsm", {}), ("ddim", {"num_inference_steps": 1000}), ("ddim", {"eta": 1.0})],
)
def test_samplers_recover_the_gaussian_target_with_many_steps(sampler, kwargs):
    torch.manual_seed(1)
    sched = DiffusionSchedule.from_name("linear", 1000)
    x = ddpm.sample(exact_eps(sched), sched, None, (4000, 2), sampler=sampler, low=None, high=None, **kwargs)
    assert (x.double().mean(0) - MU).abs().max() < 0.02
    assert ((x.double().std(0) - S).abs() / S).max() < 0.05


def test_noise_scale_scales_only_the_step_noise():
    sched = DiffusionSchedule.from_name("vp", 5)
    model = exact_eps(sched)
    z = torch.randn(5, 64, 2)
    silent = torch.cat([z[:1], torch.zeros_like(z[1:])])
    for sampler in ("diffusion_ql", "qsm"):
        zero = ddpm.sample(model, sched, None, (64, 2), sampler=sampler, noise=z, noise_scale=0.0)
        torch.testing.assert_close(zero, ddpm.sample(model, sched, None, (64, 2), sampler=sampler, noise=silent))
        half = ddpm.sample(model, sched, None, (64, 2), sampler=sampler, noise=z, noise_scale=0.5)
        halved = torch.cat([z[:1], 0.5 * z[1:]])
        torch.testing.assert_close(half, ddpm.sample(model, sched, None, (64, 2), sampler=sampler, noise=halved))


@pytest.mark.parametrize("sampler", ["diffusion_ql", "qsm", "ddim"])
def test_clipping_keeps_every_sample_in_per_dimension_bounds(sampler):
    torch.manual_seed(0)
    sched = DiffusionSchedule.from_name("vp", 5)
    wild = lambda x, t, c: 30 * torch.randn_like(x)  # noqa: E731
    low, high = torch.tensor([-1.0, -0.1]), torch.tensor([0.5, 2.0])
    x = ddpm.sample(wild, sched, None, (2000, 2), sampler=sampler, low=low, high=high)
    assert bool(((x >= low) & (x <= high)).all())
    assert bool((x == low).any() and (x == high).any())  # the bounds were actually active


def test_diffusion_ql_clamps_x0_hat_but_qsm_clamps_x_t():
    """With eps = 0 the Diffusion-QL chain's x0_hat = x_t / sqrt(abar) is clamped; QSM's x_t itself is clamped."""
    sched = DiffusionSchedule.from_name("vp", 5)
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    z = torch.zeros(5, 1, 1)
    z[0] = 3.0
    f = sched.floats
    dql = ddpm.sample(zero, sched, None, (1, 1), sampler="diffusion_ql", noise=z, low=-1.0, high=1.0)
    x = 3.0
    for i in reversed(range(5)):
        x0 = max(min(x / f["alphas_cumprod"][i] ** 0.5, 1.0), -1.0)
        x = f["posterior_mean_coef1"][i] * x0 + f["posterior_mean_coef2"][i] * x
    assert dql.item() == pytest.approx(x, abs=1e-6)
    qsm = ddpm.sample(zero, sched, None, (1, 1), sampler="qsm", noise=z, low=-1.0, high=1.0)
    x = 3.0
    for i in reversed(range(5)):
        x = max(min(x / f["alphas"][i] ** 0.5, 1.0), -1.0)
    assert qsm.item() == pytest.approx(x, abs=1e-6)


@pytest.mark.parametrize("sampler", ["diffusion_ql", "qsm", "ddim"])
def test_gradients_reach_every_step_and_no_graph_without_grad(sampler):
    sched = DiffusionSchedule.from_name("vp", 5)
    scales = torch.zeros(5, requires_grad=True)

    def model(x, t, c):  # a per-step learnable scale: its gradient shows which steps the graph reaches
        return x * (0.5 + scales[t].unsqueeze(-1)) + c

    cond = torch.randn(16, 2)
    x = ddpm.sample(model, sched, cond, (16, 2), sampler=sampler, low=-10.0, high=10.0, grad=True)
    x.pow(2).sum().backward()
    assert bool((scales.grad.abs() > 0).all())
    assert not ddpm.sample(model, sched, cond, (16, 2), sampler=sampler).requires_grad


@pytest.mark.parametrize("batch", [(), (7,), (3, 4)])
def test_batch_shapes_and_condition_broadcast(batch):
    sched = DiffusionSchedule.from_name("vp", 5)
    seen = []

    def model(x, t, c):
        seen.append((tuple(x.shape), tuple(t.shape), tuple(c.shape)))
        return c[..., :2] * 0.1 + 0 * x

    cond = torch.randn(*batch, 1, 3)  # broadcast over 5 samples per condition
    for sampler in ("diffusion_ql", "qsm", "ddim"):
        out = ddpm.sample(model, sched, cond, (*batch, 5, 2), sampler=sampler)
        assert out.shape == (*batch, 5, 2)
    assert set(seen) == {((*batch, 5, 2), (*batch, 5), (*batch, 5, 3))}


def test_inference_timesteps_validation():
    assert ddpm.inference_timesteps(10, 1) == [9]
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, 5\]"):
        ddpm.inference_timesteps(5, 6)
    with pytest.raises(ValueError, match="unknown sampler 'ddpm'"):
        ddpm.sample(lambda x, t, c: x, DiffusionSchedule.from_name("vp", 5), None, (2,), sampler="ddpm")
