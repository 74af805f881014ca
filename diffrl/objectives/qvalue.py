"""Q-ensemble plumbing shared by diffrl's actor-critic losses.

A loss receives its critic in one of two forms, and both end up as a functional ensemble whose members are evaluated
in one batched call:

* a *single* Q network (TorchRL's convention, e.g. a ``ValueOperator`` over ``["observation", "action"]``): its
  parameters are stacked ``num_qvalue_nets`` times with independent re-initialisation and the members are evaluated
  with ``torch.vmap``, exactly as TorchRL's SAC/CQL/TD3 losses do;
* a *native ensemble* module (any module with an integer attribute ``num_nets``, such as diffrl's ``twin_q`` critic)
  that already holds every member as stacked weights and writes ``state_action_value`` with shape ``[*B, num_nets]``;
  it is used as is, which skips vmap's overhead.

``ActorCriticLoss`` is the base of diffrl's TD(0) actor-critic losses (Diffusion-QL, QSM): the accepted keys, the
value estimator wiring and the critic ensemble live here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, _vmap_func, dispatch_value_estimator, distance_loss
from torchrl.objectives.value import ValueEstimatorBase


def ensemble_size(module: torch.nn.Module) -> int | None:
    """``num_nets`` of a native ensemble (on the module or on the network a ``TensorDictModule`` wraps), else None."""
    for candidate in (module, getattr(module, "module", None)):
        num_nets = getattr(candidate, "num_nets", None)
        if isinstance(num_nets, int) and num_nets > 1:
            return num_nets
    return None


def is_native_ensemble(module: torch.nn.Module) -> bool:
    """True when ``module`` evaluates all its members itself (it has an integer ``num_nets`` > 1)."""
    return ensemble_size(module) is not None


class QEnsembleMixin:
    """Adds ``_init_qvalue`` and ``_qvalues(td, params) -> Tensor[N, *B]`` to a TorchRL ``LossModule``.

    The host defines ``tensor_keys.state_action_value``.
    """

    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def _init_qvalue(
        self, qvalue_network: TensorDictModule, num_qvalue_nets: int, *, create_target_params: bool = True
    ) -> None:
        self._native_q_ensemble = is_native_ensemble(qvalue_network)
        if self._native_q_ensemble:
            self.convert_to_functional(qvalue_network, "qvalue_network", create_target_params=create_target_params)
            self.num_qvalue_nets = ensemble_size(qvalue_network)
        else:
            if num_qvalue_nets < 1:
                raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}.")
            self.convert_to_functional(
                qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=create_target_params
            )
            self.num_qvalue_nets = num_qvalue_nets
            self._vmap_qvalue = _vmap_func(qvalue_network, (None, 0), randomness="different")

    def _qvalues(self, tensordict: TensorDictBase, params: TensorDictParams) -> torch.Tensor:
        """Every member's Q(s, a) for the entries of ``tensordict``, shape ``[num_qvalue_nets, *batch]``."""
        net_input = tensordict.select(*self.qvalue_network.in_keys, strict=True)
        key = self.tensor_keys.state_action_value
        if self._native_q_ensemble:
            with params.to_module(self.qvalue_network, preserve_module_state=False):
                values = self.qvalue_network(net_input).get(key)
            return values.movedim(-1, 0)
        return self._vmap_qvalue(net_input, params).get(key).squeeze(-1)


class ActorCriticLoss(QEnsembleMixin, LossModule):
    """Base of diffrl's TD(0) actor-critic losses: keys, value estimator and a functional Q ensemble.

    Subclasses call ``_init_qvalue`` in their constructor and use ``_qvalues``, ``_q_input`` and ``_td0_target``.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (change them with ``set_keys``).

        Attributes:
            observation: the state the actor and the critics read. Defaults to ``"observation"``.
            action: dataset or replay actions. Defaults to ``"action"``.
            state_action_value: where the critic writes Q. Defaults to ``"state_action_value"``.
            reward, done, terminated: read under ``"next"``. Default to their names.
            priority: where the TD error is written for prioritised replay. Defaults to ``"td_error"``.
            priority_weight: importance weights of a prioritised buffer. Defaults to ``"priority_weight"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0,)

    def _require_diffusion_actor(self, actor_network: TensorDictModule, methods: tuple[str, ...]) -> None:
        """A TypeError naming the missing method unless ``actor_network`` has every one of ``methods``."""
        for method in methods:
            if not callable(getattr(actor_network, method, None)):
                raise TypeError(
                    f"{type(self).__name__} needs a diffusion actor with a {method}() method, got "
                    f"{type(actor_network).__name__}. Build one with registry.build('actor', 'diffusion', ...)."
                )

    def _read(self, tensordict: TensorDictBase, key: NestedKey) -> torch.Tensor:
        """``tensordict[key]``, or a KeyError naming the key (tensordict's ``get`` returns None for a missing key)."""
        value = tensordict.get(key, None)
        if value is None:
            raise KeyError(
                f"{type(self).__name__} reads {key!r}, which is missing from the batch (keys: "
                f"{sorted(map(str, tensordict.keys(True, True)))}). Add it to the batch, or point the loss at the "
                "key the batch uses with loss.set_keys(...)."
            )
        return value

    def _critic_regression(
        self,
        tensordict: TensorDictBase,
        observation: torch.Tensor,
        action: torch.Tensor,
        target_value: torch.Tensor,
        weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every critic regressed onto ``target_value`` (summed over critics, reduced over the batch) + diagnostics."""
        current_q = self._qvalues(self._q_input(observation, action), self.qvalue_network_params)
        loss = distance_loss(current_q, target_value.expand_as(current_q), loss_function=self.loss_function).sum(0)
        metadata = {
            "td_error": (current_q.detach() - target_value).abs().max(0).values,
            "q_data": current_q.detach().mean(),
            "target_value": target_value.mean(),
        }
        return self._reduce_loss(loss, tensordict=tensordict, weights=weights), metadata

    def _q_input(self, observation: torch.Tensor, action: torch.Tensor) -> TensorDictBase:
        """A tensordict the critic reads: ``action`` under its action key, ``observation`` under its other key(s).

        The critic's action key is the loss's action key, or ``"action"`` for a critic built with TorchRL's defaults.
        """
        action_keys = (self.tensor_keys.action, "action")
        td = TensorDict({}, batch_size=action.shape[:-1], device=action.device)
        for key in self.qvalue_network.in_keys:
            td.set(key, action if key in action_keys else observation)
        return td

    def _td0_target(self, tensordict: TensorDictBase, next_value: torch.Tensor) -> torch.Tensor:
        """``r + gamma (1 - terminated) next_value`` through TorchRL's value estimator (gamma set by the user)."""
        tensordict = tensordict.clone(False)
        tensordict.set(("next", self.tensor_keys.state_action_value), next_value.unsqueeze(-1))
        return self.value_estimator.value_estimate(tensordict).squeeze(-1)

    # -- keys and value estimator, as TorchRL's losses do them ------------------------------------------------------
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                value=self.tensor_keys.state_action_value,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.observation,
            self.tensor_keys.action,
            ("next", self.tensor_keys.observation),
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
        ]
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        if getattr(self, "_in_keys", None) is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> LossModule:
        """TD(0) with ``gamma`` (default 0.99); a ``ValueEstimatorBase`` instance or subclass is used as given."""
        if value_type is None:
            value_type = self.default_value_estimator
        if isinstance(value_type, ValueEstimatorBase) or (
            isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
        ):
            return LossModule.make_value_estimator(self, value_type, **hyperparams)
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value": self.tensor_keys.state_action_value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,
            **hyperparams,
        )
        return self
