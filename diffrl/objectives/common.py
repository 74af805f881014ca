"""The base of diffrl's losses: accepted keys, declared outputs, the TD(0) value estimator, the Q ensemble, ``forward``.

Every diffrl loss derives from :class:`DiffrlLossBase`, the way TorchRL's own losses (``iql.py``, ``td3.py``) keep
their keys, value estimator and ``forward`` in one class:

* ``_AcceptedKeys``: the tensordict keys, changed with ``set_keys`` (a subclass extends the dataclass);
* ``loss_terms``: the terms ``forward`` computes, in that order, each by a ``<term>_loss(tensordict) -> (loss,
  metadata)`` method; ``out_keys`` lists their ``loss_<term>`` entries followed by the detached diagnostics
  (``diagnostic_keys``), and ``select_out_keys`` filters them as in TorchRL;
* the TD(0) value estimator (``gamma`` via ``make_value_estimator``) whose keys follow ``set_keys``;
* a functional critic ensemble: a loss receives its critic in one of two forms, and both end up as an ensemble whose
  members are evaluated in one batched call. A *single* Q network (TorchRL's convention, e.g. a ``ValueOperator`` over
  ``["observation", "action"]``) has its parameters stacked ``num_qvalue_nets`` times with independent
  re-initialisation and is evaluated with ``torch.vmap``, as TorchRL's SAC/CQL/TD3 losses do; a *native ensemble*
  (any module with an integer attribute ``num_nets`` > 1, such as diffrl's ``twin_q`` critic) already holds every
  member as stacked weights, writes ``state_action_value`` with shape ``[*B, num_nets]`` and is used as is, which
  skips vmap's overhead;
* prioritised replay: a critic term's ``td_error`` metadata (``(Q_i - y)^2``, the max over critics, as TorchRL's
  TD3, IQL and CQL losses write it) is popped from the diagnostics and written into the input under
  ``tensor_keys.priority``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, _vmap_func, dispatch_value_estimator, distance_loss
from torchrl.objectives.value import ValueEstimatorBase

__all__ = ["DiffrlLossBase", "ensemble_size", "is_native_ensemble"]


def ensemble_size(module: torch.nn.Module) -> int | None:
    """``num_nets`` of a native ensemble (on the module or on the network a ``TensorDictModule`` wraps), else None.

    Example:
        >>> from diffrl import registry
        >>> ensemble_size(registry.build("critic", "twin_q", obs_dim=3, action_dim=1))
        2
        >>> ensemble_size(torch.nn.Linear(2, 1)) is None
        True
    """
    for candidate in (module, getattr(module, "module", None)):
        num_nets = getattr(candidate, "num_nets", None)
        if isinstance(num_nets, int) and num_nets > 1:
            return num_nets
    return None


def is_native_ensemble(module: torch.nn.Module) -> bool:
    """True when ``module`` evaluates all its members itself (it has an integer ``num_nets`` > 1).

    Example:
        >>> is_native_ensemble(torch.nn.Linear(2, 1))
        False
    """
    return ensemble_size(module) is not None


class DiffrlLossBase(LossModule):
    """Base class of diffrl's losses: keys, declared outputs, value estimator, Q ensemble and one ``forward``.

    A subclass sets ``loss_terms`` (computed in that order by ``forward``) and ``diagnostic_keys``, defines a
    ``<term>_loss(tensordict) -> (loss, metadata)`` method per term, and in its constructor calls
    ``convert_to_functional`` for the actor and, when it has critics, :meth:`_init_qvalue`. Critic terms use
    :meth:`_qvalues`, :meth:`_q_input`, :meth:`_td0_target` and :meth:`_critic_regression`.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from diffrl.objectives.common import DiffrlLossBase
        >>> class MeanActionLoss(DiffrlLossBase):
        ...     '''Pulls a learnable vector towards the batch's actions.'''
        ...     loss_terms = ("actor",)
        ...     diagnostic_keys = ("distance",)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.center = torch.nn.Parameter(torch.zeros(2))
        ...     def actor_loss(self, tensordict):
        ...         gap = (self._read(tensordict, self.tensor_keys.action) - self.center).pow(2).sum(-1)
        ...         return self._reduce_loss(gap, tensordict=tensordict), {"distance": gap.detach().mean()}
        >>> loss = MeanActionLoss()
        >>> out = loss(TensorDict({"action": torch.ones(4, 2)}, [4]))
        >>> loss.out_keys, out["loss_actor"].item()
        (['loss_actor', 'distance'], 2.0)
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

    #: the terms ``forward`` computes, in this order (it fixes the order of random draws); ``out_keys`` lists
    #: ``loss_actor`` first, then the others in this order.
    loss_terms: ClassVar[tuple[str, ...]] = ("qvalue", "actor")
    #: detached diagnostics ``forward`` returns after the ``loss_*`` entries, in this order.
    diagnostic_keys: ClassVar[tuple[str, ...]] = ()
    #: ``"mean"``, ``"sum"`` or ``"none"``: how ``_reduce_loss`` reduces per-sample terms (constructors override it).
    reduction: str = "mean"

    # TorchRL's convert_to_functional accepts only annotated names (it reads them along the MRO); the actor's target
    # copy is declared even where a loss creates none.
    actor_network: TensorDictModuleBase
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    # -- the one forward ---------------------------------------------------------------------------------------------
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Every term of ``loss_terms`` on one batch; the ``loss_*`` entries sum to the whole objective.

        Diagnostics are detached; a critic term's ``td_error`` goes into the input under ``tensor_keys.priority``.
        """
        losses: dict[str, torch.Tensor] = {}
        metadata: dict[str, torch.Tensor] = {}
        for term in self.loss_terms:
            losses[f"loss_{term}"], term_metadata = getattr(self, f"{term}_loss")(tensordict)
            metadata.update(term_metadata)
        td_error = metadata.pop("td_error", None)
        if td_error is not None:
            tensordict.set(self.tensor_keys.priority, td_error.detach())
        ordered = [key for key in self._declared_out_keys() if key in losses or key in metadata]
        out = {key: losses[key] if key in losses else metadata[key].detach() for key in ordered}
        out.update({key: value.detach() for key, value in metadata.items() if key not in out})
        return TensorDict(out, batch_size=[])

    def _declared_out_keys(self) -> list[str]:
        terms = sorted(self.loss_terms, key=lambda term: term != "actor")  # loss_actor first, as TorchRL's losses
        return [*(f"loss_{term}" for term in terms), *self.diagnostic_keys]

    @property
    def out_keys(self) -> list[str]:
        """``loss_actor``, the other ``loss_*`` entries, then the diagnostics; ``select_out_keys`` narrows it."""
        out_keys = getattr(self, "_out_keys", None)
        return list(out_keys) if out_keys is not None else self._declared_out_keys()

    @out_keys.setter
    def out_keys(self, values: list[str]) -> None:
        self._out_keys = values

    # -- keys -----------------------------------------------------------------------------------------------------
    def _default_in_keys(self) -> list[NestedKey]:
        keys = [
            self.tensor_keys.observation,
            self.tensor_keys.action,
            ("next", self.tensor_keys.observation),
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
        ]
        return list(dict.fromkeys(keys))

    @property
    def in_keys(self) -> list[NestedKey]:
        """The keys ``forward`` reads, following ``set_keys``."""
        in_keys = getattr(self, "_in_keys", None)
        return list(in_keys) if in_keys is not None else self._default_in_keys()

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

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

    def _weighted_batch(self, tensordict: TensorDictBase) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """What every term reads first: the priority weights (``None`` without prioritised replay), the observation
        and the action."""
        weights = self._maybe_get_priority_weight(tensordict)
        return (
            weights,
            self._read(tensordict, self.tensor_keys.observation),
            self._read(tensordict, self.tensor_keys.action),
        )

    def _require_diffusion_actor(self, actor_network: TensorDictModule, methods: tuple[str, ...]) -> None:
        """A TypeError naming the missing method unless ``actor_network`` has every one of ``methods``."""
        for method in methods:
            if not callable(getattr(actor_network, method, None)):
                raise TypeError(
                    f"{type(self).__name__} needs a diffusion actor with a {method}() method, got "
                    f"{type(actor_network).__name__}. Build one with registry.build('actor', 'diffusion', ...)."
                )

    # -- value estimator, as TorchRL's losses wire it ----------------------------------------------------------------
    def _estimator_keys(self) -> dict[str, NestedKey]:
        """The keys the value estimator reads: the next-state value (written by the loss), reward, done, terminated."""
        keys = self.tensor_keys
        return {
            "value": keys.state_action_value,
            "reward": keys.reward,
            "done": keys.done,
            "terminated": keys.terminated,
        }

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(**self._estimator_keys())
        self._in_keys = None  # re-derived from tensor_keys on the next access

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
            tensor_keys=self._estimator_keys(),
            value_network=None,
            **hyperparams,
        )
        return self

    def _init_regression(self, loss_function: str, reduction: str, gamma: float | None) -> None:
        """Store the critics' distance (``loss_function``) and the batch ``reduction``; a ``gamma`` other than
        ``None`` builds the TD(0) estimator now (the ``gamma=`` shorthand of the constructors)."""
        self.loss_function = loss_function
        self.reduction = reduction
        if gamma is not None:
            self.make_value_estimator(gamma=gamma)

    # -- the critic ensemble ---------------------------------------------------------------------------------------
    def _init_qvalue(
        self, qvalue_network: TensorDictModule, num_qvalue_nets: int, *, create_target_params: bool = True
    ) -> None:
        """Make ``qvalue_network`` functional (``qvalue_network_params`` and their target copy) as an ensemble."""
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
            "td_error": self._td_error(current_q, target_value),
            "q_data": current_q.detach().mean(),
            "target_value": target_value.mean(),
        }
        return self._reduce_loss(loss, tensordict=tensordict, weights=weights), metadata

    @staticmethod
    def _td_error(current_q: torch.Tensor, target_value: torch.Tensor) -> torch.Tensor:
        """The priority of each sample: ``max_i (Q_i - y)^2`` over critics, detached (TorchRL's TD3, IQL, CQL)."""
        return (current_q.detach() - target_value.detach()).pow(2).max(0).values
