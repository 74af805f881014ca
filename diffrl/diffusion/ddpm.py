"""The discrete (DDPM) diffusion process: forward noising, the epsilon loss and three reverse samplers.

Everything here is plain torch on tensors of any batch shape: a model is any callable
``eps = model(x_t, t, condition)`` with ``x_t: [*B, D]``, ``t`` an integer step index tensor of shape ``[*B]`` and
``condition: [*B, C]`` (or ``None``). Sample shapes come from the ``shape`` argument and the condition broadcasts to
``shape[:-1]``, so ``[]``, ``[B]`` and ``[B, T]`` batches all work.

Samplers (``T`` training steps, step index ``i`` from ``T-1`` down to 0, ``abar`` = ``alphas_cumprod``):

1. ``sample_diffusion_ql`` (Wang et al., 2023): ``x0_hat = (x_i - sqrt(1 - abar_i) eps) / sqrt(abar_i)`` clamped to the
   bounds; ``x_{i-1} = coef1_i x0_hat + coef2_i x_i + [i > 0] sqrt(beta_tilde_i) z`` (DDPM posterior); clamp the end.
2. ``sample_qsm`` (Psenka et al., 2024): ``x_{i-1} = (x_i - beta_i / sqrt(1 - abar_i) eps) / sqrt(alpha_i)
   + [i > 0] sqrt(beta_i) z``, then clamp ``x_{i-1}`` after every step.
3. ``sample_ddim`` (Song et al., 2021) on a subsequence of the training steps: ``x0_hat`` (optionally clamped, with eps
   re-derived from it), ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z`` with
   ``sigma = eta sqrt((1 - abar_prev)/(1 - abar) (1 - abar/abar_prev))``; ``eta = 0`` is deterministic given ``x_T``.

All samplers are differentiable end to end when ``grad=True`` (Diffusion-QL backpropagates its Q term through every
step) and run under ``torch.no_grad()`` otherwise. ``noise_scale`` multiplies the per-step noise (QSM's
temperature; 0 gives the noise-free chain from a random ``x_T``); ``x_T`` itself is always standard normal.
``noise`` lets the caller supply every Gaussian draw (common random numbers): a tensor of shape
``[num_draws, *shape]`` (any broadcastable shape), where draw 0 is ``x_T`` and draw ``k`` is added after reverse step
``k`` (``num_draws`` = the number of reverse steps; the last step adds none).

Constants are read as Python floats per step (``DiffusionSchedule.floats``): no indexing kernels and no host syncs
inside the loop. A model may provide ``bind(condition, steps, batch_shape) -> eps_fn(x_t, step)`` (see
``diffrl.nn.noise_nets``) to precompute the step-independent part of its computation once per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffrl.diffusion.schedules import DiffusionSchedule

__all__ = [
    "SAMPLERS",
    "q_sample",
    "epsilon_loss",
    "epsilon_loss_and_x0",
    "inference_timesteps",
    "bind_model",
    "sample",
    "sample_diffusion_ql",
    "sample_qsm",
    "sample_ddim",
]

Bound = float | Tensor | None
Model = Callable[..., Tensor]


def _gather(values: Tensor, t: Tensor, ndim: int) -> Tensor:
    """``values[t]`` shaped to broadcast against a ``[*t.shape, ...]`` tensor of ``ndim`` dims."""
    out = values[t]
    return out.reshape(*t.shape, *([1] * (ndim - t.ndim)))


def q_sample(schedule: DiffusionSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Forward noising ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` for integer steps ``t: [*B]``.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("vp", 5)
        >>> x_t = q_sample(sched, torch.ones(2, 1), torch.tensor([0, 4]), torch.zeros(2, 1))
        >>> [round(v, 4) for v in x_t.squeeze(-1).tolist()]
        [0.8967, 0.0801]
    """
    return (
        _gather(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + _gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def _noised(
    schedule: DiffusionSchedule, x0: Tensor, t: Tensor | None, noise: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, t, noise)`` by ``q_sample``, drawing ``t`` (uniform over the steps) and then ``noise`` when not given."""
    if t is None:
        t = torch.randint(0, schedule.num_steps, x0.shape[:-1], device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    return q_sample(schedule, x0, t, noise), t, noise


def epsilon_loss(
    model: Model,
    schedule: DiffusionSchedule,
    x0: Tensor,
    condition: Tensor | None,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Per-sample epsilon-prediction loss ``mean_d (model(x_t, t, c) - eps)^2``, shape ``x0.shape[:-1]``.

    ``t`` (default uniform over ``0..T-1``) and ``noise`` (default standard normal) are drawn when not given. The loss
    is not reduced over the batch, so a caller can weight, mask or average it.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("vp", 5)
        >>> perfect = lambda x_t, t, c: torch.ones_like(x_t)
        >>> epsilon_loss(perfect, sched, torch.zeros(3, 4, 2), None, noise=torch.ones(3, 4, 2)).abs().max().item()
        0.0
    """
    x_t, t, noise = _noised(schedule, x0, t, noise)
    return (model(x_t, t, condition) - noise).pow(2).mean(-1)


def epsilon_loss_and_x0(
    model: Model,
    schedule: DiffusionSchedule,
    x0: Tensor,
    condition: Tensor | None,
    *,
    low: Bound = -1.0,
    high: Bound = 1.0,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``epsilon_loss`` and, from the same network call, the one-step reconstruction of the clean sample.

    With ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and ``eps_hat = model(x_t, t, c)``, the reconstruction is
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`` clamped to ``[low, high]``, differentiable through
    ``eps_hat``: the action approximation of Kang et al. (EDP, NeurIPS 2023), which replaces a full reverse chain by
    one network call on a noised dataset sample.

    Returns:
        ``(loss [*B], x0_hat [*B, D])``.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("vp", 5)
        >>> perfect = lambda x_t, t, c: torch.full_like(x_t, 0.5)  # predicts the noise used below exactly
        >>> x0 = torch.tensor([[0.3, -0.2]])
        >>> noise = torch.full((1, 2), 0.5)
        >>> loss, x0_hat = epsilon_loss_and_x0(perfect, sched, x0, None, t=torch.tensor([3]), noise=noise)
        >>> float(loss), torch.allclose(x0_hat, x0, atol=1e-5)
        (0.0, True)
    """
    x_t, t, noise = _noised(schedule, x0, t, noise)
    eps = model(x_t, t, condition)
    loss = (eps - noise).pow(2).mean(-1)
    x0_hat = (
        _gather(schedule.sqrt_recip_alphas_cumprod, t, x0.ndim) * x_t
        - _gather(schedule.sqrt_recipm1_alphas_cumprod, t, x0.ndim) * eps
    )
    return loss, _clamp_fn(low, high)(x0_hat)


def inference_timesteps(num_steps: int, num_inference_steps: int | None = None) -> list[int]:
    """Increasing training-step indices a sampler with ``num_inference_steps`` steps visits (evenly spaced).

    Example:
        >>> inference_timesteps(100, 5)
        [0, 25, 50, 74, 99]
        >>> inference_timesteps(5)
        [0, 1, 2, 3, 4]
    """
    if num_inference_steps is None or num_inference_steps == num_steps:
        return list(range(num_steps))
    if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= num_steps:
        raise ValueError(
            f"num_inference_steps must be an int in [1, {num_steps}] (the training steps), got {num_inference_steps!r}."
        )
    if num_inference_steps == 1:
        return [num_steps - 1]
    # torch.linspace's float64 formula (start + i step in the first half, end - (K - 1 - i) step in the second) and
    # round-half-to-even in plain Python: the same indices as before, and no tensor, so torch.compile sees constants.
    end, count = float(num_steps - 1), num_inference_steps
    step, half = end / (count - 1), count // 2
    grid = (round(i * step if i < half else end - (count - 1 - i) * step) for i in range(count))
    return sorted(set(grid))


def bind_model(model: Model, condition: Tensor | None, steps: Sequence[int], batch_shape: torch.Size) -> Callable:
    """``eps_fn(x_t, step)`` for a sampling call: the model's own ``bind`` if it has one, else a closure over
    ``model(x_t, t, condition)`` with the step tensors built once."""
    bind = getattr(model, "bind", None)
    if callable(bind):
        return bind(condition, steps, batch_shape)
    device = condition.device if condition is not None else None
    index = {int(s): k for k, s in enumerate(steps)}
    ts = torch.as_tensor(list(index), device=device).reshape(-1, *([1] * len(batch_shape)))
    ts = ts.expand(len(index), *batch_shape)
    cond = condition.expand(*batch_shape, condition.shape[-1]) if condition is not None else None

    def eps_fn(x_t: Tensor, step: int) -> Tensor:
        return model(x_t, ts[index[step]], cond)

    return eps_fn


def _clamp_fn(low: Bound, high: Bound) -> Callable[[Tensor], Tensor]:
    if low is None and high is None:
        return lambda x: x
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        return lambda x: torch.clamp(x, low, high)
    return lambda x: x.clamp(low, high)


def _clamp_scaled(x: Tensor, low: Bound, high: Bound, scale: float, inplace: bool) -> Tensor:
    """Clamp ``x`` to ``[low * scale, high * scale]`` (``scale > 0``), in place when allowed."""
    if low is None and high is None:
        return x
    if scale != 1.0:
        low = low * scale if low is not None else None
        high = high * scale if high is not None else None
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        return torch.clamp(x, low, high, out=x) if inplace else torch.clamp(x, low, high)
    return x.clamp_(low, high) if inplace else x.clamp(low, high)


def _draws(noise: Tensor | None, count: int, shape: torch.Size, like: Tensor | None) -> Sequence[Tensor]:
    if noise is None:
        kwargs = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        return torch.randn(count, *shape, **kwargs).unbind(0)
    if noise.shape[0] < count:
        raise ValueError(f"noise must hold at least {count} draws along dim 0, got shape {tuple(noise.shape)}.")
    return [draw.expand(shape) for draw in noise[:count].unbind(0)]


def _grad_context(grad: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if grad else torch.no_grad()


def _start_chain(
    model: Model,
    condition: Tensor | None,
    shape: Sequence[int],
    steps: Sequence[int],
    noise: Tensor | None,
    num_draws: int,
) -> tuple[Tensor, Sequence[Tensor], Callable]:
    """``(x_T, draws, eps_fn)`` of a reverse chain over ``steps``: ``x_T`` is ``draws[0]``, draw ``k`` follows step
    ``k``."""
    shape = torch.Size(shape)
    z = _draws(noise, num_draws, shape, condition)
    return z[0], z, bind_model(model, condition, steps, shape[:-1])


def _add_scaled(x: Tensor, other: Tensor, alpha: float, inplace: bool) -> Tensor:
    """``x + alpha * other``, in place when allowed."""
    return x.add_(other, alpha=alpha) if inplace else torch.add(x, other, alpha=alpha)


def sample_diffusion_ql(
    model: Model,
    schedule: DiffusionSchedule,
    condition: Tensor | None,
    shape: Sequence[int],
    *,
    low: Bound = -1.0,
    high: Bound = 1.0,
    noise_scale: float = 1.0,
    grad: bool = False,
    noise: Tensor | None = None,
) -> Tensor:
    """Diffusion-QL's ancestral sampler: x0-hat clamped to ``[low, high]``, DDPM posterior variance, final clamp.

    Args:
        model: ``eps = model(x_t, t, condition)``.
        schedule: the training schedule (all ``T`` steps are visited).
        condition: ``[*Bc, C]`` broadcastable to ``shape[:-1]``, or None.
        shape: output shape ``[*B, D]``.
        low, high: clamp bounds (floats or tensors broadcastable to ``shape``; None disables clamping).
        noise_scale: multiplies the per-step noise. Default 1.
        grad: build the autograd graph through the chain. Default False.
        noise: optional ``[T, *shape]`` (broadcastable) Gaussian draws, see the module docstring.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("vp", 5)
        >>> x = sample_diffusion_ql(lambda x, t, c: torch.zeros_like(x), sched, None, (1000, 2), low=-0.5, high=0.5)
        >>> x.shape, bool(x.abs().max() <= 0.5)
        (torch.Size([1000, 2]), True)
    """
    f = schedule.floats
    steps = list(range(schedule.num_steps))
    clamp = _clamp_fn(low, high)
    draw_noise = noise_scale != 0
    # Graph-free runs update fresh tensors in place (fewer kernels and allocations per step).
    inplace = not (grad and torch.is_grad_enabled())
    with _grad_context(grad):
        x, z, eps_fn = _start_chain(model, condition, shape, steps, noise, len(steps) if draw_noise else 1)
        for k, i in enumerate(reversed(steps)):
            eps = eps_fn(x, i)
            # y = x0_hat / c with c = 1/sqrt(abar_i): clamping y to bounds / c is clamping x0_hat to the bounds, and
            # the scalar c folds into the posterior-mean coefficient.
            c = f["sqrt_recip_alphas_cumprod"][i]
            y = torch.add(x, eps, alpha=-f["sqrt_recipm1_alphas_cumprod"][i] / c)
            y = _clamp_scaled(y, low, high, 1.0 / c, inplace)
            coef_x0, coef_x = f["posterior_mean_coef1"][i] * c, f["posterior_mean_coef2"][i]
            if inplace:
                x = y.mul_(coef_x0).add_(x, alpha=coef_x) if coef_x else y.mul_(coef_x0)
            else:
                x = torch.add(y * coef_x0, x, alpha=coef_x)
            if i > 0 and draw_noise:
                sigma = noise_scale * f["posterior_variance"][i] ** 0.5
                x = _add_scaled(x, z[k + 1], sigma, inplace)
        return clamp(x)


def sample_qsm(
    model: Model,
    schedule: DiffusionSchedule,
    condition: Tensor | None,
    shape: Sequence[int],
    *,
    low: Bound = -1.0,
    high: Bound = 1.0,
    noise_scale: float = 1.0,
    grad: bool = False,
    noise: Tensor | None = None,
) -> Tensor:
    """QSM's sampler: ``beta_i`` noise variance times ``noise_scale`` (the temperature), ``x_t`` clamped every step.

    Arguments as ``sample_diffusion_ql``.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("vp", 5)
        >>> x = sample_qsm(lambda x, t, c: torch.zeros_like(x), sched, torch.zeros(3), (7, 1), noise_scale=0.5)
        >>> x.shape, bool(x.abs().max() <= 1)
        (torch.Size([7, 1]), True)
    """
    f = schedule.floats
    steps = list(range(schedule.num_steps))
    draw_noise = noise_scale != 0
    inplace = not (grad and torch.is_grad_enabled())
    with _grad_context(grad):
        x, z, eps_fn = _start_chain(model, condition, shape, steps, noise, len(steps) if draw_noise else 1)
        for k, i in enumerate(reversed(steps)):
            eps = eps_fn(x, i)
            x = torch.add(x, eps, alpha=-f["betas"][i] / f["sqrt_one_minus_alphas_cumprod"][i])
            x = x.mul_(f["alphas"][i] ** -0.5) if inplace else x * f["alphas"][i] ** -0.5
            if i > 0 and draw_noise:
                sigma = noise_scale * f["betas"][i] ** 0.5
                x = _add_scaled(x, z[k + 1], sigma, inplace)
            x = _clamp_scaled(x, low, high, 1.0, inplace)
        return x


def sample_ddim(
    model: Model,
    schedule: DiffusionSchedule,
    condition: Tensor | None,
    shape: Sequence[int],
    *,
    num_inference_steps: int | None = None,
    eta: float = 0.0,
    low: Bound = -1.0,
    high: Bound = 1.0,
    clip_x0: bool = True,
    noise_scale: float = 1.0,
    grad: bool = False,
    noise: Tensor | None = None,
) -> Tensor:
    """DDIM on ``num_inference_steps`` evenly spaced training steps (default all), final clamp.

    Args:
        num_inference_steps: steps visited (``<= T``). Default T.
        eta: 0 for the deterministic DDIM update, 1 for DDPM-like noise. Default 0.
        clip_x0: clamp ``x0_hat`` to the bounds (and re-derive eps from it). Default True.
        Others as ``sample_diffusion_ql``; ``noise`` needs ``len(inference_timesteps)`` draws.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("linear", 100)
        >>> x = sample_ddim(lambda x, t, c: torch.zeros_like(x), sched, None, (4, 3), num_inference_steps=10)
        >>> x.shape, bool(x.abs().max() <= 1)
        (torch.Size([4, 3]), True)
    """
    f = schedule.floats
    steps = inference_timesteps(schedule.num_steps, num_inference_steps)
    clamp = _clamp_fn(low, high)
    clamp_x0 = clamp if clip_x0 else (lambda x: x)
    abar = f["alphas_cumprod"]
    draw_noise = noise_scale != 0 and eta != 0
    with _grad_context(grad):
        x, z, eps_fn = _start_chain(model, condition, shape, steps, noise, len(steps) if draw_noise else 1)
        descending = steps[::-1]
        for k, i in enumerate(descending):
            a_t = abar[i]
            a_prev = abar[descending[k + 1]] if k + 1 < len(descending) else 1.0
            eps = eps_fn(x, i)
            x0 = (x - eps * (1.0 - a_t) ** 0.5) * a_t**-0.5
            if clip_x0 and (low is not None or high is not None):
                x0 = clamp_x0(x0)
                eps = (x - x0 * a_t**0.5) * (1.0 - a_t) ** -0.5
            sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)) ** 0.5
            x = x0 * a_prev**0.5 + eps * max(1.0 - a_prev - sigma**2, 0.0) ** 0.5
            if draw_noise and k + 1 < len(descending):
                x = torch.add(x, z[k + 1], alpha=noise_scale * sigma)
        return clamp(x)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "diffusion_ql": sample_diffusion_ql,
    "qsm": sample_qsm,
    "ddim": sample_ddim,
}


def sample(
    model: Model,
    schedule: DiffusionSchedule,
    condition: Tensor | None,
    shape: Sequence[int],
    *,
    sampler: str = "diffusion_ql",
    **kwargs,
) -> Tensor:
    """Dispatch to ``SAMPLERS[sampler]`` ("diffusion_ql", "qsm" or "ddim") with the keyword arguments it accepts.

    Example:
        >>> import torch
        >>> from diffrl.diffusion.schedules import DiffusionSchedule
        >>> sched = DiffusionSchedule.from_name("vp", 5)
        >>> sample(lambda x, t, c: torch.zeros_like(x), sched, None, (2,), sampler="qsm").shape
        torch.Size([2])
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}.")
    return SAMPLERS[sampler](model, schedule, condition, shape, **kwargs)
