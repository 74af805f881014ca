"""EDM math: preconditioning, loss weighting, Karras grid, stochastic Heun sampling, guidance and inpainting."""

from __future__ import annotations

import math

import pytest
import torch

from diffrl.diffusion.edm import EDMDenoiser, churn_sigmas, edm_loss, heun_sample, karras_sigmas, precondition
from diffrl.nn.denoisers import ResidualMLPDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor):
    """The exact denoiser E[x0 | x0 + sigma n = x] of data ~ N(mean, cov)."""

    def denoise(x, sigma):
        eye = torch.eye(cov.shape[0], dtype=cov.dtype)
        gain = cov @ torch.linalg.inv(cov + float(sigma) ** 2 * eye)
        return mean + (x - mean) @ gain.T

    return denoise


class _Zero(torch.nn.Module):
    def forward(self, x, c_noise):
        return torch.zeros_like(x)


class _Const(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, c_noise):
        return torch.full_like(x, self.value)


class _Probe(torch.nn.Module):
    """F(x, c_noise) = 2 x + c_noise: reveals what the wrapper feeds the network."""

    def forward(self, x, c_noise):
        return 2 * x + c_noise.unsqueeze(-1)


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_preconditioning_formulas(sigma_data):
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precondition(sigma, sigma_data)
    sd = sigma_data
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # the wrapper computes c_skip x + c_out F(c_in x, c_noise), with per-row sigma
    x = torch.randn(6, 3, dtype=torch.float64)
    out = EDMDenoiser(_Probe(), sigma_data)(x, sigma)
    expected = c_skip[:, None] * x + c_out[:, None] * (2 * c_in[:, None] * x + c_noise[:, None])
    torch.testing.assert_close(out, expected)
    # a scalar sigma broadcasts over any batch shape
    x3 = torch.randn(2, 4, 3, dtype=torch.float64)
    out3 = EDMDenoiser(_Probe(), sigma_data)(x3, torch.tensor(0.5, dtype=torch.float64))
    c = precondition(torch.tensor(0.5, dtype=torch.float64), sigma_data)
    torch.testing.assert_close(out3, c[0] * x3 + c[1] * (2 * c[2] * x3 + c[3]))


def test_loss_weight_makes_the_ideal_gaussian_loss_one():
    # for data ~ N(0, sd^2 I) the ideal denoiser is c_skip x (network output 0), and its weighted error is exactly 1
    # at every noise level: E[(c_skip(x0 + s n) - x0)^2] = s^2 sd^2 / (s^2 + sd^2) = 1 / weight
    torch.manual_seed(0)
    sd = 0.5
    x0 = torch.randn(200_000, 2) * sd
    loss = edm_loss(EDMDenoiser(_Zero(), sigma_data=sd), x0)
    assert loss.shape == (200_000,)
    assert abs(loss.mean().item() - 1.0) < 0.02
    # the weighted loss is the raw network's regression loss: an output off by 0.3 everywhere pays 0.3^2 more
    worse = edm_loss(EDMDenoiser(_Const(0.3), sigma_data=sd), x0)
    assert abs(worse.mean().item() - 1.09) < 0.02


def test_karras_grid_values():
    n, smin, smax, rho = 5, 0.002, 80.0, 7.0
    s = karras_sigmas(n, smin, smax, rho, dtype=torch.float64)
    expected = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)]
    torch.testing.assert_close(s[:-1], torch.tensor(expected, dtype=torch.float64))
    assert s.shape == (n + 1,) and s[-1] == 0 and s[0] == smax
    assert abs(s[-2].item() - smin) < 1e-12
    assert bool((s[:-1] > s[1:]).all())
    assert [round(v, 4) for v in karras_sigmas(4).tolist()] == [80.0, 9.7232, 0.47, 0.002, 0.0]
    with pytest.raises(ValueError, match="num_steps"):
        karras_sigmas(0)


@pytest.mark.parametrize("s_churn", [0.0, 40.0])
def test_heun_sampler_matches_a_gaussian_target(s_churn):
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = heun_sample(
        gaussian_denoiser(mean, cov), (20_000, 2), karras_sigmas(128, dtype=torch.float64), s_churn=s_churn,
        generator=gen, dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0)


def test_sampler_batch_shapes_and_graph():
    net = ResidualMLPDenoiser(2, width=16, blocks=1, embed_dim=8)
    denoiser = EDMDenoiser(net)
    sigmas = karras_sigmas(4)
    assert heun_sample(denoiser, (2,), sigmas).shape == (2,)
    assert heun_sample(denoiser, (3, 5, 2), sigmas, s_churn=10).shape == (3, 5, 2)
    no_graph = heun_sample(denoiser, (4, 2), sigmas)
    assert not no_graph.requires_grad
    with_graph = heun_sample(denoiser, (4, 2), sigmas, grad=True)
    with_graph.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.input_proj.parameters())


def test_mixture_of_gaussians_samples_land_on_the_modes():
    torch.manual_seed(0)
    centers = torch.tensor([[-2.0, -2.0], [2.0, 2.0], [-2.0, 2.0], [2.0, -2.0]])
    std, scale = 0.2, 2.0  # train on data / scale so the data std is about 1 (sigma_data = 1)
    denoiser = EDMDenoiser(ResidualMLPDenoiser(2, width=64, blocks=2, embed_dim=32))
    opt = torch.optim.Adam(denoiser.parameters(), lr=3e-3)
    for _ in range(600):
        x = centers[torch.randint(0, 4, (256,))] + std * torch.randn(256, 2)
        loss = edm_loss(denoiser, x / scale).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen = torch.Generator().manual_seed(1)
    x = heun_sample(denoiser, (2000, 2), karras_sigmas(32), s_churn=10, generator=gen) * scale
    dist = torch.cdist(x, centers)
    assert (dist.min(1).values < 3 * std).float().mean() >= 0.9
    share = torch.bincount(dist.argmin(1), minlength=4) / x.shape[0]
    assert bool((share > 0.15).all()), share


def test_guidance_descends_the_energy_and_visits_the_churned_levels():
    # data ~ N(0, I); energy E(x) = log cosh(x_0 - 3) acts on coordinate 0 only (a bounded gradient, as an explicit
    # sampler step of size ~30 at sigma = 80 would blow up an unbounded one: EDIS clips its guidance for that reason)
    denoiser = gaussian_denoiser(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    sigmas = karras_sigmas(16, dtype=torch.float64)
    seen = []

    def grad_energy(x, sigma):
        seen.append(float(sigma))
        g = torch.zeros_like(x)
        g[..., 0] = torch.tanh(x[..., 0] - 3.0)
        return g

    def run(guidance):
        gen = torch.Generator().manual_seed(0)
        return heun_sample(denoiser, (4000, 2), sigmas, s_churn=20, guidance=guidance, generator=gen,
                           dtype=torch.float64)  # fmt: skip

    plain = run(None)
    toward = run(grad_energy)
    away = run(lambda x, s: -grad_energy(x, s))
    assert abs(plain[:, 0].mean()) < 0.05
    assert toward[:, 0].mean() > 1.0  # +grad E descends E: towards 3
    assert away[:, 0].mean() < -1.0  # -grad E climbs it
    torch.testing.assert_close(toward[:, 1], plain[:, 1])  # the other coordinate is untouched
    # the callback is queried at the churned level of each step and at the grid level of each Heun correction
    expected = churn_sigmas(sigmas, s_churn=20)
    assert sorted(set(seen), reverse=True) == pytest.approx(expected.tolist())
    gamma = min(20 / 16, math.sqrt(2) - 1)
    assert max(seen) == pytest.approx(80.0 * (1 + gamma))


def test_inpainting_holds_known_coordinates_exactly_and_conditions_the_rest():
    rho = 0.8
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    denoiser = gaussian_denoiser(torch.zeros(2, dtype=torch.float64), cov)
    known = torch.zeros(3000, 2, dtype=torch.float64)
    known[:, 0] = torch.linspace(-2, 2, 3000, dtype=torch.float64)
    mask = torch.tensor([True, False])  # a mask over FEATURES, broadcast over the batch

    def run(resample):
        gen = torch.Generator().manual_seed(0)
        return heun_sample(denoiser, known.shape, karras_sigmas(128, dtype=torch.float64), s_churn=80,
                           inpaint_mask=mask, inpaint_values=known, inpaint_resample=resample, generator=gen,
                           dtype=torch.float64)  # fmt: skip

    def slope(x):  # least-squares slope of x1 on x0; the true conditional mean is E[x1 | x0] = rho x0
        return ((x[:, 1] * x[:, 0]).sum() / x[:, 0].pow(2).sum()).item()

    plain, resampled = run(0), run(3)
    assert torch.equal(plain[:, 0], known[:, 0]) and torch.equal(resampled[:, 0], known[:, 0])
    # replacement inpainting is approximate; RePaint-style resampling brings it close to the true conditional
    assert 0.5 < slope(plain) < rho + 0.05
    assert abs(slope(resampled) - rho) < 0.08
    assert abs(slope(resampled) - rho) < abs(slope(plain) - rho)
    assert abs((resampled[:, 1] - rho * resampled[:, 0]).std().item() - math.sqrt(1 - rho**2)) < 0.1
    with pytest.raises(ValueError, match="both inpaint_mask and inpaint_values"):
        heun_sample(denoiser, (2, 2), karras_sigmas(2), inpaint_mask=mask)


@pytest.mark.parametrize(("s_tmin", "s_tmax"), [(0.05, 50.0), (0.0, math.inf), (1.0, 2.0)])
def test_churn_is_applied_exactly_inside_the_sigma_window(s_tmin, s_tmax):
    # the first denoiser call of step i is at sigma_hat_i = (1 + gamma_i) sigma_i: churned steps are those where the
    # sampler evaluated above the grid level, and each of them drew one noise injection
    sigmas = karras_sigmas(32, dtype=torch.float64)
    calls = []

    def denoiser(x, sigma):
        calls.append(float(sigma))
        return torch.zeros_like(x)

    heun_sample(denoiser, (3, 2), sigmas, s_churn=80, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.003,
                generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # fmt: skip
    grid = sigmas[:-1].tolist()
    assert len(calls) == 2 * 32 - 1  # an Euler and a Heun evaluation per step, no correction at the final sigma = 0
    firsts = calls[::2]
    churned = [i for i, (s, s_hat) in enumerate(zip(grid, firsts)) if s_hat > s * (1 + 1e-9)]
    expected = [i for i, s in enumerate(grid) if s_tmin <= s <= s_tmax]
    assert churned == expected
    assert 0 < len(expected) < 32 or (s_tmin, s_tmax) == (0.0, math.inf)
    gamma = min(80 / 32, math.sqrt(2) - 1)
    assert all(firsts[i] == pytest.approx(grid[i] * (1 + gamma)) for i in churned)
