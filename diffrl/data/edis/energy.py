"""EDIS energy functions: noise-conditioned MLP energies, their InfoNCE loss, and the guidance they give the sampler.

Each energy ``E(x_sigma, sigma)`` approximates a negative log density ratio between a target distribution (online
states, the current policy, the true dynamics) and the diffusion prior, at noise level ``sigma``; low energy means
"online-like". Departures from the official EDIS code, deliberate:

* the energy is conditioned on the continuous noise level (``ln(sigma) / 4``, EDM's ``c_noise``), not on a step index of
  one particular schedule, so it can be queried at any level the sampler visits; its input is scaled by EDM's
  ``c_in(sigma) = 1 / sqrt(sigma^2 + 1)`` so that the MLP sees unit-scale inputs at every level;
* energies live in the normalised coordinates the sampler works in, so their gradients are the right ones to add;
* :class:`EnergyGuidance` can scale the gradients by sigma (``sigma_scale``): the EDM ODE derivative is
  ``-sigma * score``, so that is the factor that turns the prior ``q`` into ``q * exp(-E)`` (see ``EDISConfig``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EnergyNet", "info_nce_loss", "EnergyGuidance"]


class EnergyNet(nn.Module):
    """A scalar energy ``E(x, sigma) = MLP([c_in(sigma) x, ln(sigma) / 4])``.

    Args:
        dim: transition dimension.
        width: hidden width. Default 256.
        depth: number of hidden layers (ReLU). Default 3.
        sigma_data: data scale used in ``c_in``. Default 1.

    Batch shapes come from the inputs: ``x`` is ``[..., dim]``, ``sigma`` a scalar or ``[...]``; the output ``[...]``.

    Example:
        >>> import torch
        >>> energy = EnergyNet(4, width=16, depth=2)
        >>> energy(torch.randn(5, 3, 4), torch.tensor(0.5)).shape
        torch.Size([5, 3])
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 3, sigma_data: float = 1.0) -> None:
        super().__init__()
        if int(depth) < 1 or int(width) < 1:
            raise ValueError(f"EnergyNet needs width >= 1 and depth >= 1, got width={width}, depth={depth}.")
        layers: list[nn.Module] = []
        size = dim + 1
        for _ in range(int(depth)):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, 1))
        self.mlp = nn.Sequential(*layers)
        self.dim = int(dim)
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()
        h = torch.cat([x * c_in.unsqueeze(-1), (sigma.log() / 4).unsqueeze(-1)], dim=-1)
        return self.mlp(h).squeeze(-1)


def info_nce_loss(
    energy: nn.Module,
    positives: Tensor,
    negatives: Tensor,
    sigma: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """InfoNCE with noised samples: each positive against its ``K`` negatives at one shared noise level.

    1. stack ``[positive, negative_1..K]`` per row and noise them all to ``x + sigma * n`` (independent ``n``);
    2. logits ``= -E(x_sigma, sigma)``; loss ``= -log softmax(logits)[positive]``.

    At the optimum ``E(x) = -log(p_pos(x) / p_neg(x)) + c(sigma)`` for the noised distributions.

    Args:
        energy: ``E(x, sigma)`` returning ``[...]``.
        positives: ``[B, D]`` clean positives. negatives: ``[B, K, D]`` clean negatives. sigma: ``[B]`` noise levels.

    Returns:
        the loss per positive, ``[B]``.

    Example:
        >>> import torch
        >>> class Dist(torch.nn.Module):  # energy = squared distance to 0; positives at 0 are easy to recognise
        ...     def forward(self, x, sigma):
        ...         return 10 * x.pow(2).sum(-1)
        >>> pos, neg = torch.zeros(4, 2), torch.full((4, 3, 2), 2.0)
        >>> bool((info_nce_loss(Dist(), pos, neg, torch.full((4,), 1e-3)) < 1e-3).all())
        True
    """
    group = torch.cat([positives.unsqueeze(1), negatives], dim=1)
    noise = torch.randn(group.shape, generator=generator, device=group.device, dtype=group.dtype)
    sig = sigma.to(group.dtype).reshape(-1, 1)
    noisy = group + sig.unsqueeze(-1) * noise
    logits = -energy(noisy, sig.expand(group.shape[:2]))
    target = torch.zeros(group.shape[0], dtype=torch.long, device=group.device)
    return F.cross_entropy(logits, target, reduction="none")


class EnergyGuidance:
    """Guidance callback ``g(x, sigma) = clip(s(sigma) * sum_i w_i * mask_i * grad E_i(x, sigma))`` for the EDM sampler.

    Each energy's gradient is restricted to the features of ``mask_i`` (the transform's default passes all-true masks
    except for the policy energy, which moves only the action: ``mask_guidance=False``); ``s(sigma)`` is ``sigma`` with
    ``sigma_scale`` (the transform's default) and 1 otherwise; the sum is clipped per sample to norm ``clip_norm``.
    Because it is *added* to the ODE derivative (see :mod:`diffrl.diffusion.edm`), samples descend the
    energies. All gradients are taken in one backward pass: energy ``i`` sees ``x`` with gradient flowing only through
    its block.

    Args:
        terms: ``(energy, weight, mask)`` triples; ``mask`` a boolean ``[D]`` over features.
        clip_norm: maximum per-sample norm of the total (None: no clip).
        sigma_scale: multiply the summed gradient by ``sigma`` before clipping (exact guidance for the EDM ODE,
            whose derivative is ``-sigma * score``). Default False.

    Example:
        >>> import torch
        >>> class Square(torch.nn.Module):
        ...     def forward(self, x, sigma):
        ...         return 0.5 * x.pow(2).sum(-1)  # gradient = x
        >>> g = EnergyGuidance([(Square(), 2.0, torch.tensor([True, False]))], clip_norm=None)
        >>> g(torch.tensor([[1.0, 1.0]]), torch.tensor(1.0)).tolist()
        [[2.0, 0.0]]
    """

    def __init__(
        self,
        terms: Sequence[tuple[nn.Module, float, Tensor]],
        clip_norm: float | None = None,
        sigma_scale: bool = False,
    ) -> None:
        self.terms = [(e, float(w), m) for e, w, m in terms if float(w) != 0.0]
        self.clip_norm = clip_norm
        self.sigma_scale = bool(sigma_scale)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if not self.terms:
            return torch.zeros_like(x)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            total = 0.0
            for energy, weight, mask in self.terms:
                mask = mask.to(x.device)
                routed = torch.where(mask, leaf, leaf.detach())  # grad E_i reaches only block i
                total = total + weight * energy(routed, sigma).sum()
            (grad,) = torch.autograd.grad(total, leaf)
        if self.sigma_scale:
            grad = grad * sigma.to(grad.dtype)
        if self.clip_norm is not None:
            norm = grad.norm(dim=-1, keepdim=True)
            grad = grad * (self.clip_norm / norm.clamp_min(1e-12)).clamp(max=1.0)
        return grad
