"""The training loops of EDIS's models and the adapters from user inputs (data containers, policies) to tensors.

Optimizers live here, inside ``EDISTransform.fit`` (a self-contained trainer, like SynthER's generator); the losses
they minimise are :func:`diffrl.diffusion.edm.edm_loss` and :func:`diffrl.data.edis.energy.info_nce_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torchrl.envs.utils import ExplorationType, set_exploration_type

from diffrl.data.edis.config import EDISConfig
from diffrl.data.edis.energy import info_nce_loss
from diffrl.diffusion.edm import EDMDenoiser, edm_loss

__all__ = ["Policy", "as_transitions", "fused_adam_option", "policy_actions", "train_denoiser", "train_energy"]

Policy = Callable[[Tensor], Any] | TensorDictModuleBase


def as_transitions(data: Any, name: str) -> TensorDictBase:
    """A flat TensorDict from a TensorDict, a replay buffer (its storage, untransformed), or a list mixing them.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> a = TensorDict({"observation": torch.zeros(2, 3, 1), "extra": torch.ones(2, 3)}, [2, 3])
        >>> b = TensorDict({"observation": torch.ones(4, 1)}, [4])
        >>> out = as_transitions([a, b], "data")  # flattened, concatenated on their common keys
        >>> out.batch_size, list(out.keys())
        (torch.Size([10]), ['observation'])
    """
    if isinstance(data, TensorDictBase):
        return data.reshape(-1)
    if isinstance(data, (list, tuple)) and data:
        parts = [as_transitions(d, name) for d in data]
        parts = [p for p in parts if p.batch_size.numel() > 0] or [TensorDict({}, [0])]
        keys = set.intersection(*(set(p.keys(True, True)) for p in parts))
        return torch.cat([p.select(*keys) for p in parts])
    storage = getattr(data, "storage", None)
    if storage is not None and hasattr(data, "__len__"):
        if len(data) == 0:  # e.g. the online buffer at the start of fine-tuning
            return TensorDict({}, [0])
        # read the storage, not rb[:], which would run the buffer's transforms (possibly this one)
        return storage[: len(data)].reshape(-1)
    raise TypeError(
        f"{name} must be a TensorDict of transitions, a replay buffer, or a non-empty list of those; got "
        f"{type(data).__name__}."
    )


def policy_actions(policy: Policy, obs: Tensor) -> Tensor:
    """Actions of ``policy`` at ``obs``: a TensorDictModule is called on a TensorDict, anything else on the tensor;
    both under RANDOM exploration (a stochastic policy's actions, not its mode).

    Example:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> actor = TensorDictModule(lambda s: -s, in_keys=["observation"], out_keys=["action"])
        >>> policy_actions(actor, torch.ones(3, 1)).tolist()
        [[-1.0], [-1.0], [-1.0]]
    """
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        if isinstance(policy, TensorDictModuleBase):
            in_keys = list(policy.in_keys)
            in_key = in_keys[0] if len(in_keys) == 1 else "observation"
            out = policy(TensorDict({in_key: obs}, batch_size=obs.shape[:1], device=obs.device))
            action = out.get("action")
        else:
            action = policy(obs)
            if isinstance(action, TensorDictBase):
                action = action.get("action")
            elif isinstance(action, (tuple, list)):
                action = action[0]
    if not isinstance(action, Tensor):
        raise TypeError(
            f"the policy returned {type(action).__name__}; EDIS needs an action tensor [N, action_dim] "
            "(or a TensorDict with 'action')."
        )
    return action.to(device=obs.device, dtype=torch.float32).reshape(obs.shape[0], -1)


def _tail_mean(losses: list[Tensor]) -> float:
    """Mean of the last 10% of a run's losses (at least one): a less noisy end-of-training value than the last."""
    return float(torch.stack(losses[-max(1, len(losses) // 10) :]).mean())


def fused_adam_option(device: torch.device) -> dict[str, bool]:
    """``{"fused": True}`` where PyTorch has a fused Adam(W) kernel (CPU, CUDA), else ``{}``: one kernel per step
    instead of several per parameter, which is most of an optimizer step for EDIS's small networks.

    Example:
        >>> import torch
        >>> fused_adam_option(torch.device("cpu")), fused_adam_option(torch.device("meta"))
        ({'fused': True}, {})
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def train_denoiser(
    denoiser: EDMDenoiser, ema_denoiser: EDMDenoiser, x: Tensor, cfg: EDISConfig, generator: torch.Generator
) -> float:
    """``cfg.diffusion_steps`` AdamW steps (cosine schedule, grad clip) of the EDM loss on rows of ``x``. The EMA copy
    equals the model up to step ``cfg.ema_start``; after it, every ``cfg.ema_every`` steps it moves toward the model
    with decay ``min(cfg.ema, (1 + t) / (10 + t))``, ``t`` counting steps since ``ema_start``. Returns the mean loss of
    the last 10% of steps.

    Example:
        >>> import copy, torch
        >>> from diffrl.nn.denoisers import ResidualMLPDenoiser
        >>> den = EDMDenoiser(ResidualMLPDenoiser(2, width=16, blocks=1, embed_dim=8))
        >>> ema = copy.deepcopy(den)
        >>> cfg = EDISConfig(diffusion_steps=3, batch_size=4)
        >>> loss = train_denoiser(den, ema, torch.randn(10, 2), cfg, torch.Generator().manual_seed(0))
        >>> not torch.equal(ema.net.input_proj.weight, den.net.input_proj.weight)  # the EMA lags behind
        True
    """
    device = x.device
    params = list(denoiser.parameters())
    ema_params = list(ema_denoiser.parameters())
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused_adam_option(device)
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.diffusion_steps)
    losses = []
    denoiser.train()
    for step in range(cfg.diffusion_steps):
        idx = torch.randint(x.shape[0], (cfg.batch_size,), generator=generator, device=device)
        loss = edm_loss(denoiser, x[idx], p_mean=cfg.p_mean, p_std=cfg.p_std, generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        # EMA with a warm-up, so short CPU runs are not dominated by the random initial weights; before ema_start
        # the copy simply tracks the model
        t = step + 1 - cfg.ema_start
        if t <= 0:
            decay = 0.0
        elif t % cfg.ema_every == 0:
            decay = min(cfg.ema, (1 + t - 1) / (10 + t - 1))
        else:
            decay = None
        if decay is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
        losses.append(loss.detach())
    denoiser.eval()
    return _tail_mean(losses)


def train_energy(
    energy: nn.Module,
    optimizer: torch.optim.Optimizer,
    positives: Tensor,
    negatives: Tensor,
    levels: Tensor,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """``steps`` InfoNCE minibatches: rows of ``positives [M, D]`` with their ``negatives [M, K, D]``, each group at a
    noise level drawn uniformly from ``levels``. Returns the mean loss of the last 10% of steps.

    Example:
        >>> import torch
        >>> from diffrl.data.edis.energy import EnergyNet
        >>> _ = torch.manual_seed(0)
        >>> energy = EnergyNet(2, width=16, depth=1)
        >>> opt = torch.optim.Adam(energy.parameters(), lr=3e-2)
        >>> pos, neg = torch.zeros(32, 2), torch.randn(32, 4, 2) * 3
        >>> gen = torch.Generator().manual_seed(0)
        >>> train_energy(energy, opt, pos, neg, torch.tensor([0.01]), 30, 16, gen) < 1.0  # chance: ln 5 = 1.6
        True
    """
    device = positives.device
    energy.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(positives.shape[0], (batch_size,), generator=generator, device=device)
        lvl = torch.randint(levels.numel(), (batch_size,), generator=generator, device=device)
        loss = info_nce_loss(energy, positives[idx], negatives[idx], levels[lvl], generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    energy.eval()
    return _tail_mean(losses)
