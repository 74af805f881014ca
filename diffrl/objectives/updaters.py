"""Target-network updaters with a per-network rate, interval and warm-up.

TorchRL's ``SoftUpdate`` moves every target of a loss by the same tau at every call. Some algorithms schedule each
target differently: Diffusion-QL moves the critic targets by tau = 0.005 every step but updates its EMA actor with
decay 0.995 only every 5 steps and only from step 1000 on (before that the EMA actor keeps its initial weights).
``TargetUpdater`` expresses such schedules over any TorchRL ``LossModule`` that holds ``target_<net>_params``, and
is a drop-in for ``SoftUpdate`` (same constructor argument, ``step()``, ``state_dict()``/``load_state_dict()``).

Unlike TorchRL's updaters, building a ``TargetUpdater`` does not copy the online weights into the targets (unless
``sync_targets=True``): it can be built after a checkpoint was loaded into the loss without resetting the targets.

Step counting follows Diffusion-QL: the counter is the number of ``step()`` calls made before the current one, and a
network is updated when ``counter >= start`` and ``counter % every == 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import TargetNetUpdater

__all__ = ["UpdateSchedule", "TargetUpdater", "diffusion_ql_updater"]


@dataclass(frozen=True)
class UpdateSchedule:
    """When and how far one target network moves: ``target <- target + tau * (source - target)``.

    Args:
        tau: Polyak rate in (0, 1]; an EMA with decay d has tau = 1 - d.
        every: update on steps that are multiples of ``every``. Default 1.
        start: first step (0-based count of previous ``step()`` calls) on which updates may happen. Default 0.

    Example:
        >>> schedule = UpdateSchedule(tau=0.005, every=5, start=1000)
        >>> [s for s in (995, 999, 1000, 1003, 1005) if schedule.due(s)]
        [1000, 1005]
    """

    tau: float
    every: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < float(self.tau) <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}; for an EMA with decay d pass tau = 1 - d.")
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"every must be a positive integer, got {self.every}.")
        if int(self.start) != self.start or self.start < 0:
            raise ValueError(f"start must be a non-negative integer, got {self.start}.")

    def due(self, step: int) -> bool:
        """Whether the network is updated on ``step``."""
        return step >= self.start and step % self.every == 0


class TargetUpdater(TargetNetUpdater):
    """Soft target updates with one schedule per network of a TorchRL ``LossModule``.

    Networks are named as the loss names them (``target_<net>_params`` -> ``<net>``, e.g. ``"qvalue_network"``,
    ``"actor_network"``). A network without an entry in ``schedules`` follows the default ``(tau, every, start)``.

    Args:
        loss_module: the loss whose ``target_<net>_params`` are updated.
        tau: default Polyak rate. Default 0.005.
        every: default interval in steps. Default 1.
        start: default warm-up: no update before this step. Default 0.
        schedules: per-network overrides, ``{net: UpdateSchedule | {"tau": ..., "every": ..., "start": ...}}``.
        sync_targets: copy the online parameters into the targets now (what TorchRL's ``SoftUpdate`` always does).
            Default False, so targets loaded from a checkpoint survive.

    ``state_dict()`` holds the step counter; the target parameters themselves are in ``loss_module.state_dict()``,
    so saving both resumes a run on the same schedule.

    Example:
        >>> import torch
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl.objectives import TD3BCLoss
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.data import Bounded
        >>> actor = TensorDictModule(torch.nn.Linear(3, 1), ["observation"], ["action"])
        >>> critic = ValueOperator(MLP(in_features=4, out_features=1, num_cells=[8]), ["observation", "action"])
        >>> loss = TD3BCLoss(actor, critic, action_spec=Bounded(-1, 1, (1,)))
        >>> updater = TargetUpdater(loss, tau=0.5, schedules={"actor_network": {"tau": 0.5, "every": 2, "start": 2}})
        >>> with torch.no_grad():
        ...     _ = loss.actor_network_params.apply_(lambda p: p.add_(1.0))
        >>> def actor_target_moved() -> bool:
        ...     before = loss.target_actor_network_params.clone()
        ...     updater.step()
        ...     return not (before == loss.target_actor_network_params).all()
        >>> [actor_target_moved() for _ in range(5)]  # steps 0..4: warm-up until 2, then every 2 steps
        [False, False, True, False, True]
    """

    def __init__(
        self,
        loss_module: LossModule,
        *,
        tau: float = 0.005,
        every: int = 1,
        start: int = 0,
        schedules: Mapping[str, UpdateSchedule | Mapping[str, Any]] | None = None,
        sync_targets: bool = False,
    ) -> None:
        self._sync_targets = sync_targets
        super().__init__(loss_module)
        default = UpdateSchedule(tau=tau, every=every, start=start)
        networks = self.networks
        schedules = dict(schedules or {})
        unknown = sorted(set(schedules) - set(networks))
        if unknown:
            raise ValueError(
                f"schedules name networks {unknown} that have no target parameters in {type(loss_module).__name__}; "
                f"networks with targets: {networks}. Use those names (target_<net>_params -> <net>), or build the "
                "loss with target parameters for that network (e.g. delay_actor=True)."
            )
        self.schedules: dict[str, UpdateSchedule] = {
            net: _as_schedule(schedules.get(net, default), net) for net in networks
        }
        self.counter = 0

    def init_(self) -> None:
        """Find the target entries that differ from their sources (shared ones are skipped), as TorchRL does."""
        distinct = []
        for key, source in self._sources.items(True, True):
            key = key if isinstance(key, tuple) else (key,)
            target = self._targets.get(("target_" + key[0], *key[1:]))
            if target.requires_grad:
                raise RuntimeError(f"target_{key[0]} is part of an autograd graph; targets must be detached buffers.")
            if target.is_leaf and source.requires_grad and not target.is_set_to(source.data):
                distinct.append(key)
                if self._sync_targets:
                    target.data.copy_(source.data)
        if not distinct:
            raise RuntimeError(
                f"{type(self.loss_module).__name__} has no target parameters distinct from its online parameters; "
                "build the loss with target networks (e.g. delay_qvalue=True) or do not use a target updater."
            )
        self._sources = self._sources.select(*distinct).lock_()
        self._targets = self._targets.select(*[("target_" + key[0], *key[1:]) for key in distinct]).lock_()
        self.initialized = True

    @property
    def networks(self) -> list[str]:
        """Names of the networks whose targets this updater moves (those whose target differs from the source)."""
        return sorted(_network_name(key) for key in self._sources.keys())

    def step(self) -> None:
        """Advance one training step, moving every network whose schedule is due."""
        if not self.initialized:
            raise RuntimeError(f"{type(self).__name__} must be initialised (init_()) before step().")
        for key in self._sources.keys():
            schedule = self.schedules[_network_name(key)]
            if not schedule.due(self.counter):
                continue
            target = self._targets.get(f"target_{key}")
            if target.requires_grad:
                raise RuntimeError(f"target_{key} is part of an autograd graph; targets must be detached buffers.")
            target.data.lerp_(self._sources.get(key).data, schedule.tau)
        self.counter += 1

    def _step(self, p_source, p_target) -> None:  # step() is overridden; kept for the abstract interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The step counter (the targets are saved with the loss module)."""
        return {"initialized": self.initialized, "counter": self.counter}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the step counter saved by ``state_dict()``."""
        if "counter" not in state_dict:
            raise KeyError(f"expected a TargetUpdater state with a 'counter' entry, got keys {sorted(state_dict)}.")
        self.counter = int(state_dict["counter"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(counter={self.counter}, schedules={self.schedules})"


def diffusion_ql_updater(
    loss_module: LossModule,
    *,
    critic_tau: float = 0.005,
    actor_decay: float = 0.995,
    actor_every: int = 5,
    actor_start: int = 1000,
    critic: str = "qvalue_network",
    actor: str = "actor_network",
) -> TargetUpdater:
    """Diffusion-QL's schedule: critic Polyak ``critic_tau`` every step; actor EMA ``actor_decay`` every
    ``actor_every`` steps from step ``actor_start`` on (Wang et al., 2023, official code).

    Other networks with targets, if any, follow the critic's schedule.

    Example:
        >>> from diffrl import registry
        >>> actor = registry.build("actor", "diffusion", obs_dim=3, action_dim=1, hidden_sizes=(8,))
        >>> critic = registry.build("critic", "twin_q", obs_dim=3, action_dim=1, hidden_sizes=(8,))
        >>> loss = registry.build("loss", "diffusion_ql", actor_network=actor, qvalue_network=critic)
        >>> updater = diffusion_ql_updater(loss)
        >>> updater.schedules["actor_network"]
        UpdateSchedule(tau=0.005, every=5, start=1000)
    """
    actor_tau = round(1.0 - actor_decay, 12)  # 1 - 0.995 without the float noise in the repr
    return TargetUpdater(
        loss_module,
        tau=critic_tau,
        schedules={
            critic: UpdateSchedule(tau=critic_tau),
            actor: UpdateSchedule(tau=actor_tau, every=actor_every, start=actor_start),
        },
    )


def _network_name(params_key: str) -> str:
    """``"qvalue_network_params"`` -> ``"qvalue_network"``."""
    return params_key[: -len("_params")] if params_key.endswith("_params") else params_key


def _as_schedule(value: UpdateSchedule | Mapping[str, Any], network: str) -> UpdateSchedule:
    if isinstance(value, UpdateSchedule):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"tau", "every", "start"})
        if unknown:
            raise ValueError(f"schedule of {network!r} has unknown keys {unknown}; accepted: tau, every, start.")
        return UpdateSchedule(**value)
    raise TypeError(
        f"schedule of {network!r} must be an UpdateSchedule or a mapping with tau/every/start, "
        f"got {type(value).__name__}."
    )
