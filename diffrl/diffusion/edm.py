"""EDM (Karras et al., 2022): continuous-sigma diffusion with preconditioning, a log-normal training loss, the Karras
sigma grid and a stochastic Heun sampler with guidance and inpainting.

Reference: T. Karras, M. Aittala, T. Aila, S. Laine, "Elucidating the Design Space of Diffusion-Based Generative
Models", NeurIPS 2022. EDIS (docs/algorithms.md section 6) generates transitions with this model.

The data are corrupted as ``x_sigma = x + sigma * n`` with ``n ~ N(0, I)``; a denoiser ``D(x_sigma, sigma)`` estimates
``x``. The probability-flow ODE runs sigma from ``sigma_max`` down to 0 with derivative
``dx/dsigma = (x - D(x, sigma)) / sigma``. Everything here works on tensors of shape ``[..., dim]`` (any batch shape,
taken from the tensors) and imports nothing from RL.

Guidance sign convention: a guidance callback ``g(x, sigma)`` is *added to the ODE derivative* ``dx/dsigma``. Because
sigma decreases along the sampler (``sigma_next - sigma < 0``), the sample moves by ``-(|d sigma|) * g``: a callback
that returns ``+grad E(x)`` makes samples descend the energy ``E`` (towards low energy), and ``-grad log p`` makes them
climb a log-density.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "precondition",
    "EDMDenoiser",
    "edm_loss",
    "karras_sigmas",
    "churn_sigmas",
    "heun_sample",
]

Guidance = Callable[[Tensor, Tensor], Tensor]


def precondition(sigma: Tensor, sigma_data: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The EDM preconditioning coefficients ``(c_skip, c_out, c_in, c_noise)`` for noise level(s) ``sigma``.

    1. ``c_skip = sd^2 / (sigma^2 + sd^2)``
    2. ``c_out = sigma * sd / sqrt(sigma^2 + sd^2)``
    3. ``c_in = 1 / sqrt(sigma^2 + sd^2)``
    4. ``c_noise = ln(sigma) / 4``

    with ``sd = sigma_data``, so that ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` has unit-variance network
    inputs and targets.

    Example:
        >>> import torch
        >>> c_skip, c_out, c_in, c_noise = precondition(torch.tensor(1.0))
        >>> round(c_skip.item(), 4), round(c_out.item(), 4), round(c_in.item(), 4), c_noise.item()
        (0.5, 0.7071, 0.7071, 0.0)
    """
    sd2 = sigma_data**2
    denom = sigma**2 + sd2
    c_skip = sd2 / denom
    c_out = sigma * sigma_data / denom.sqrt()
    c_in = denom.rsqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMDenoiser(nn.Module):
    """Wraps a raw network ``F(x, c_noise) -> x-shaped`` into the preconditioned denoiser ``D(x, sigma)``.

    ``sigma`` may be a scalar tensor, a python float, or a tensor of the batch shape ``x.shape[:-1]``; it is broadcast
    to the batch shape before the network sees ``c_noise`` (one value per row).

    Args:
        net: any module called as ``net(x, c_noise)`` with ``x`` of shape ``[..., dim]`` and ``c_noise`` of shape
            ``[...]`` (e.g. :class:`diffrl.nn.denoisers.ResidualMLPDenoiser`).
        sigma_data: standard deviation of the (normalised) data. Default 1.

    Example:
        >>> import torch
        >>> class Zero(torch.nn.Module):
        ...     def forward(self, x, c_noise):
        ...         return torch.zeros_like(x)
        >>> D = EDMDenoiser(Zero())
        >>> x = torch.full((4, 2), 2.0)
        >>> torch.allclose(D(x, torch.tensor(1.0)), x / 2)  # c_skip(1) = 1/2, network contributes nothing
        True
    """

    def __init__(self, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}. Use the data's standard deviation (1).")
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        c_skip, c_out, c_in, c_noise = precondition(sigma, self.sigma_data)
        f = self.net(x * c_in.unsqueeze(-1), c_noise)
        return c_skip.unsqueeze(-1) * x + c_out.unsqueeze(-1) * f


def edm_loss(
    denoiser: EDMDenoiser,
    x0: Tensor,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample EDM training loss: ``ln sigma ~ N(p_mean, p_std^2)``, weight ``(s^2 + sd^2) / (s sd)^2``.

    1. draw ``sigma = exp(p_mean + p_std * z)`` per sample and ``n ~ N(0, I)``;
    2. ``loss = weight(sigma) * mean_over_dims((D(x0 + sigma n, sigma) - x0)^2)``.

    The weight makes the loss equal to the unit-variance regression loss of the raw network, ``||F - target||^2``.

    Args:
        denoiser: the preconditioned denoiser (its ``sigma_data`` sets the weight).
        x0: clean data ``[..., dim]``.
        p_mean, p_std: log-normal parameters of the training noise levels (EDM defaults -1.2, 1.2).
        generator: optional torch generator for reproducible noise.

    Returns:
        the loss per sample, shape ``x0.shape[:-1]``; reduce it as you like.

    Example:
        >>> import torch
        >>> from diffrl.nn.denoisers import ResidualMLPDenoiser
        >>> D = EDMDenoiser(ResidualMLPDenoiser(2, width=16, blocks=1))
        >>> edm_loss(D, torch.randn(8, 2)).shape
        torch.Size([8])
    """
    batch_shape = x0.shape[:-1]
    z = torch.randn(batch_shape, generator=generator, device=x0.device, dtype=x0.dtype)
    sigma = (p_mean + p_std * z).exp()
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    sd = denoiser.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    denoised = denoiser(x0 + sigma.unsqueeze(-1) * noise, sigma)
    return weight * (denoised - x0).pow(2).mean(-1)


def karras_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The Karras noise grid: ``num_steps`` levels from ``sigma_max`` down to ``sigma_min`` plus a trailing 0.

    ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for ``i < n``.

    Returns:
        a tensor of shape ``[num_steps + 1]``, decreasing, ending in 0.

    Example:
        >>> s = karras_sigmas(4)
        >>> [round(v, 4) for v in s.tolist()]
        [80.0, 9.7232, 0.47, 0.002, 0.0]
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    # the grid is computed in float64 so that its end points are exact before casting
    i = torch.arange(num_steps, dtype=torch.float64)
    frac = i / max(num_steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + frac * (lo - hi)) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=dtype)


def _churn_gamma(sigma: float, num_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    if s_tmin <= sigma <= s_tmax:
        return min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
    return 0.0


def churn_sigmas(sigmas: Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf")) -> Tensor:
    """The noise levels a stochastic Heun pass over ``sigmas`` evaluates its denoiser (and guidance) at.

    Those are the churned levels ``sigma_hat_i = (1 + gamma_i) sigma_i`` of every step and the grid levels
    ``sigma_{i+1} > 0`` of every Heun correction. Models queried inside the sampler (e.g. EDIS's energies) can be
    trained on exactly these values.

    Example:
        >>> s = karras_sigmas(3)
        >>> churn_sigmas(s).tolist() == sorted(set(s[:-1].tolist()), reverse=True)  # no churn: the grid itself
        True
    """
    n = sigmas.numel() - 1
    values = [(1 + _churn_gamma(float(s), n, s_churn, s_tmin, s_tmax)) * float(s) for s in sigmas[:-1]]
    values += [float(s) for s in sigmas[1:-1]]
    return torch.tensor(sorted(set(values), reverse=True), dtype=sigmas.dtype, device=sigmas.device)


def heun_sample(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    shape: Sequence[int],
    sigmas: Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    guidance: Guidance | None = None,
    inpaint_mask: Tensor | None = None,
    inpaint_values: Tensor | None = None,
    inpaint_resample: int = 0,
    generator: torch.Generator | None = None,
    grad: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Stochastic Heun sampler (EDM Algorithm 2) with an optional guidance term and inpainting.

    For each step ``i`` of the grid ``sigmas`` (as returned by :func:`karras_sigmas`):

    1. churn: ``gamma = min(s_churn / n, sqrt(2) - 1)`` if ``s_tmin <= sigma_i <= s_tmax`` else 0;
       ``sigma_hat = (1 + gamma) sigma_i``; ``x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) * s_noise * n``;
    2. Euler: ``d = (x_hat - D(x_hat, sigma_hat)) / sigma_hat + g(x_hat, sigma_hat)``;
       ``x' = x_hat + (sigma_{i+1} - sigma_hat) d``;
    3. Heun correction when ``sigma_{i+1} > 0``: ``d' = (x' - D(x', sigma_{i+1})) / sigma_{i+1} + g(x', sigma_{i+1})``;
       ``x' = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2``;
    4. inpainting: known coordinates are reset to ``known + sigma * n_known`` at the current noise level after every
       update (churn included), with one noise draw ``n_known`` per sample kept for the whole chain; after the last
       step (``sigma = 0``) they equal ``known`` exactly. Replacement inpainting only approximates the conditional
       ``p(free | known)`` (the free coordinates commit early); ``inpaint_resample = r`` re-noises each step's result
       back to ``sigma_hat`` and repeats the step ``r`` times (RePaint), which tightens it at ``r + 1`` times the cost.

    Args:
        denoiser: ``D(x, sigma)`` (e.g. :class:`EDMDenoiser`); ``sigma`` is passed as a 0-dim tensor.
        shape: output shape ``[..., dim]``.
        sigmas: decreasing noise levels ending in 0 (:func:`karras_sigmas`).
        s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity knobs (0, 0, inf, 1 = deterministic Heun).
        guidance: ``g(x, sigma) -> Tensor`` broadcastable to ``x``, added to the ODE derivative at both Heun stages.
            Returning ``+grad E`` descends the energy ``E`` (see the module docstring). The callback must compute its
            own gradients (wrap them in ``torch.enable_grad()``), as the sampler runs under ``no_grad`` by default.
        inpaint_mask: boolean tensor broadcastable to ``shape``; True marks coordinates held to ``inpaint_values``.
        inpaint_values: tensor broadcastable to ``shape`` holding the known values (other entries are ignored).
        inpaint_resample: extra re-noise/re-step passes per step when inpainting (default 0: plain replacement).
        generator: torch generator for reproducible sampling.
        grad: keep the autograd graph through the whole chain (default: sample under ``torch.no_grad()``).
        device, dtype: of the samples.

    Returns:
        samples of shape ``shape``.

    Example:
        >>> import torch
        >>> identity = lambda x, sigma: torch.zeros_like(x)  # the ideal denoiser of data concentrated at 0
        >>> x = heun_sample(identity, (5, 2), karras_sigmas(8), inpaint_mask=torch.tensor([True, False]),
        ...                 inpaint_values=torch.tensor([3.0, 0.0]))
        >>> bool((x[:, 0] == 3.0).all()), bool(x[:, 1].abs().max() < 1e-6)
        (True, True)
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(
            f"sigmas must be a 1-D decreasing grid ending in 0 (karras_sigmas(n)), got shape {tuple(sigmas.shape)} "
            f"ending in {float(sigmas[-1]) if sigmas.numel() else None}."
        )
    if (inpaint_mask is None) != (inpaint_values is None):
        raise ValueError("inpainting needs both inpaint_mask and inpaint_values (got only one of them).")
    shape = torch.Size(shape)
    if device is None and inpaint_values is not None:
        device = inpaint_values.device
    with torch.set_grad_enabled(grad):
        sigmas_list = [float(s) for s in sigmas]
        n = len(sigmas_list) - 1
        noise = lambda: torch.randn(shape, generator=generator, device=device, dtype=dtype)  # noqa: E731
        mask = known = None
        if inpaint_mask is not None:
            mask = inpaint_mask.to(device=device, dtype=torch.bool).expand(shape)
            known = inpaint_values.to(device=device, dtype=dtype).expand(shape)
            known_noise = noise()

        def reimpose(x: Tensor, sigma: float) -> Tensor:
            if mask is None:
                return x
            return torch.where(mask, known + sigma * known_noise if sigma > 0 else known, x)

        def derivative(x: Tensor, sigma: float) -> Tensor:
            s = torch.tensor(sigma, device=x.device, dtype=x.dtype)
            d = (x - denoiser(x, s)) / sigma
            if guidance is not None:
                d = d + guidance(x, s)
            return d

        x = reimpose(noise() * sigmas_list[0], sigmas_list[0])
        for i in range(n):
            sigma, sigma_next = sigmas_list[i], sigmas_list[i + 1]
            gamma = _churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = reimpose(x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise(), sigma_hat)
            passes = 1 + (inpaint_resample if mask is not None and sigma_next > 0 else 0)
            x_next = x
            for p in range(passes):
                if p > 0:  # RePaint-style: re-noise the step's result back to sigma_hat and take the step again
                    x = reimpose(x_next + math.sqrt(sigma_hat**2 - sigma_next**2) * noise(), sigma_hat)
                d = derivative(x, sigma_hat)
                x_next = x + (sigma_next - sigma_hat) * d
                if sigma_next > 0:
                    d_next = derivative(x_next, sigma_next)
                    x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
                x_next = reimpose(x_next, sigma_next)
            x = x_next
        return x
