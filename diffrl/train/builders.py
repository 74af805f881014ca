"""The networks, loss and optimizers of an actor-critic recipe, built from its config groups.

Every actor-critic recipe builds the same things in the same order: the actor (``cfg.actor``) within the env's action
bounds, the critic (``cfg.critic``), for IQL a state-value network (``cfg.value``), the loss (``cfg.loss``) over them
with its value estimator, then one Adam per trainable group of the loss, and checkpoints all of it under the same names.
:func:`build_actor_critic`, :func:`loss_optimizers` and :func:`training_state` do it once, so a recipe reads as the
algorithm's choices (which networks, which learning rates) rather than as the plumbing between the registry and
TorchRL's losses.

The construction order is fixed (actor, critic, value, loss) because every network draws its initial weights from the
global generator: the same order gives the same weights for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from diffrl import registry

__all__ = ["ActorCritic", "build_actor_critic", "loss_optimizers", "training_state"]


class ActorCritic(NamedTuple):
    """What :func:`build_actor_critic` returns: unpack it as ``actor, critic, loss = build_actor_critic(...)``."""

    actor: torch.nn.Module
    critic: torch.nn.Module
    loss: torch.nn.Module


def build_actor_critic(
    cfg: Mapping[str, Any],
    dims: Mapping[str, int],
    device: Any = "cpu",
    *,
    action_spec: Any = None,
    value: bool = False,
    gamma: float | None = None,
) -> ActorCritic:
    """Build ``cfg.actor`` and ``cfg.critic`` through the registry, then the loss ``cfg.loss`` over them.

    Args:
        cfg: a recipe config with the groups ``actor``, ``critic``, ``loss`` (and ``value`` when ``value=True``), each
            a registry config (``name`` plus options).
        dims: ``{"obs_dim": ..., "action_dim": ...}``, passed to every network builder.
        device: where the networks are moved before the loss is built (so its target copies live there too).
        action_spec: a bounded TorchRL action spec; its ``space.low`` / ``space.high`` become the actor's
            ``action_low`` / ``action_high``. ``None`` leaves the actor's own defaults.
        value: also build ``cfg.value`` (a registry "critic", e.g. ``V(s)`` for IQL) and pass it to the loss as
            ``value_network``.
        gamma: when given, ``loss.make_value_estimator(gamma=gamma)``; ``None`` keeps the loss's own estimator.

    Returns:
        ``ActorCritic(actor, critic, loss)``; the value network, when built, is the loss's ``value_network``.

    Example:
        >>> from torchrl.data import Bounded
        >>> cfg = {"actor": {"name": "tanh_normal", "hidden_sizes": [8]}, "critic": {"name": "q", "hidden_sizes": [8]},
        ...        "loss": {"name": "sac", "num_qvalue_nets": 2}}
        >>> spec = Bounded(low=-2.0, high=2.0, shape=(1,))
        >>> actor, critic, loss = build_actor_critic(cfg, {"obs_dim": 3, "action_dim": 1}, action_spec=spec, gamma=0.5)
        >>> float(loss.value_estimator.gamma)
        0.5
        >>> from tensordict import TensorDict
        >>> dist = actor.get_dist(TensorDict({"observation": torch.zeros(1, 3)}, batch_size=[1]))
        >>> float(dist.low), float(dist.high)  # the spec's bounds, not the actor's default [-1, 1]
        (-2.0, 2.0)
    """
    bounds = {} if action_spec is None else {"action_low": action_spec.space.low, "action_high": action_spec.space.high}
    actor = registry.build("actor", cfg["actor"], **dims, **bounds).to(device)
    critic = registry.build("critic", cfg["critic"], **dims).to(device)
    networks = {"actor_network": actor, "qvalue_network": critic}
    if value:
        networks["value_network"] = registry.build("critic", cfg["value"], **dims).to(device)
    loss = registry.build("loss", cfg["loss"], **networks)
    if gamma is not None:
        loss.make_value_estimator(gamma=gamma)
    return ActorCritic(actor, critic, loss)


# What each optimizer name trains: TorchRL losses keep their networks' parameters as ``<name>_network_params``
# TensorDicts, and their learned temperatures as bare parameters.
_GROUPS: dict[str, Callable[[Any], Any]] = {
    "actor": lambda loss: loss.actor_network_params.values(True, True),
    "critic": lambda loss: loss.qvalue_network_params.values(True, True),
    "value": lambda loss: loss.value_network_params.values(True, True),
    "alpha": lambda loss: [loss.log_alpha],
    "alpha_prime": lambda loss: [loss.log_alpha_prime],
}


def loss_optimizers(loss: torch.nn.Module, *, fused: bool = True, **lrs: float) -> dict[str, torch.optim.Adam]:
    """One Adam per named parameter group of a TorchRL loss, with the learning rate given for it.

    Names: ``actor`` (``loss.actor_network_params``), ``critic`` (``loss.qvalue_network_params``), ``value``
    (``loss.value_network_params``), ``alpha`` (``loss.log_alpha``), ``alpha_prime`` (``loss.log_alpha_prime``). Only
    tensors that require gradients are optimized: the parameter TensorDicts also hold buffers (action bounds, a
    diffusion schedule) that never receive one. ``fused`` (default) steps every parameter in one kernel, several times
    faster than the multi-tensor path on CPU.

    Returns the optimizers in the order given, keyed by name (recipes checkpoint them as ``optim_<name>``).

    Example:
        >>> cfg = {"actor": {"name": "tanh_normal", "hidden_sizes": [8]}, "critic": {"name": "q", "hidden_sizes": [8]},
        ...        "loss": {"name": "sac", "num_qvalue_nets": 2}}
        >>> _, _, loss = build_actor_critic(cfg, {"obs_dim": 3, "action_dim": 1})
        >>> optims = loss_optimizers(loss, actor=3e-4, critic=1e-3, alpha=1e-3)
        >>> list(optims), optims["critic"].param_groups[0]["lr"]
        (['actor', 'critic', 'alpha'], 0.001)
        >>> optims["alpha"].param_groups[0]["params"] == [loss.log_alpha]
        True
        >>> loss_optimizers(loss, policy=3e-4)
        Traceback (most recent call last):
        ...
        ValueError: loss_optimizers got the group 'policy'; accepted: actor, critic, value, alpha, alpha_prime. Fix: ...
    """
    optims = {}
    for name, lr in lrs.items():
        if name not in _GROUPS:
            raise ValueError(
                f"loss_optimizers got the group {name!r}; accepted: {', '.join(_GROUPS)}. Fix: use one of those names."
            )
        params = [p for p in _GROUPS[name](loss) if p.requires_grad]
        optims[name] = torch.optim.Adam(params, lr=lr, fused=fused)
    return optims


def training_state(
    optimizers: Mapping[str, Any], schedulers: Mapping[str, Any] | None = None, **objects: Any
) -> dict[str, Any]:
    """What a recipe checkpoints, under the names every recipe uses: ``objects`` as named (the loss, the target
    updater, ...), then each optimizer as ``optim_<name>`` and each learning-rate scheduler as ``schedule_<name>``.
    An object given as ``None`` (an optional part switched off, such as ``edis=None``) is left out.

    The result is the ``checkpoint`` mapping of :class:`~diffrl.train.trainer.Trainer`: everything in it must have
    ``state_dict`` / ``load_state_dict``. Shared names keep a run's checkpoint readable by the next version of the
    recipe.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> optims = {"actor": torch.optim.Adam(net.parameters())}
        >>> schedule = torch.optim.lr_scheduler.StepLR(optims["actor"], step_size=10)
        >>> list(training_state(optims, {"actor": schedule}, loss=net, edis=None))
        ['loss', 'optim_actor', 'schedule_actor']
    """
    state = {name: obj for name, obj in objects.items() if obj is not None}
    state.update({f"optim_{name}": optimizer for name, optimizer in optimizers.items()})
    state.update({f"schedule_{name}": scheduler for name, scheduler in (schedulers or {}).items()})
    return state
