"""Cal-QL: SAC-style conservative Q-learning with Monte-Carlo calibration, as a TorchRL ``LossModule``.

The reference is CORL's ``algorithms/finetune/cal_ql.py`` (the base EDIS builds on). It differs from TorchRL's
``CQLLoss`` where fine-tuning cares: policy actions drawn at s' enter the conservative logsumexp at the *current*
state, alpha' scales the critic's conservative term, the gap can be clipped, and the max-target backup takes the min
over critics before the max over actions. Calibration lifts the policy-action values in the logsumexp to the dataset's
return-to-go, so pre-training never pushes Q below the value of the behaviour policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.modules.distributions.utils import rsample_and_log_prob, sample_and_log_prob
from torchrl.objectives.utils import _cache_values, distance_loss

from diffrl import registry
from diffrl.objectives.common import DiffrlLossBase

__all__ = ["CalQLLoss"]

# CORL clamps alpha' to this range before using it.
_ALPHA_PRIME_MAX = 1e6
_OUT_KEYS = (
    "loss_actor",
    "loss_qvalue",
    "loss_cql",
    "loss_alpha",
    "alpha",
    "entropy",
    "q_value",
    "target_value",
    "q_random",
    "q_policy",
    "cql_diff",
    "calibration_fraction",
    "cql_alpha",
)


@registry.register("loss", "cal_ql")
class CalQLLoss(DiffrlLossBase):
    """Calibrated conservative Q-learning (Cal-QL) over a tanh-Gaussian actor and an ensemble of Q networks.

    Reference: Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online Fine-Tuning",
    NeurIPS 2023; implementation facts from CORL ``algorithms/finetune/cal_ql.py``. With ``calibration=False`` the
    loss is CORL's CQL (Kumar et al., 2020).

    Per batch (s, a, r, s', terminated, mc_return), with critics Q_1..Q_C, target critics Q'_i, N = cql_n_actions:

    1. Actor: a_pi ~ pi(.|s) reparameterised; ``loss_actor = alpha * log pi(a_pi|s) - min_i Q_i(s, a_pi)`` with
       detached critic parameters and detached alpha.
    2. Alpha: ``loss_alpha = -log_alpha * (log pi(a_pi|s) + target_entropy)``; target entropy -action_dim.
    3. TD: a' ~ pi(.|s') (N samples with ``cql_max_target_backup``: min over critics, then max over samples);
       V' = min_i Q'_i(s', a') [- alpha log pi(a'|s') with ``backup_entropy``]; y = r + gamma (1 - terminated) V';
       ``loss_qvalue = sum_i (Q_i(s, a) - y)^2``.
    4. Conservative term, all Q values at the *current* state s: N uniform actions in the action bounds, N policy
       actions at s and N policy actions drawn at s' (all detached). With ``calibration``, the policy-action values are
       lifted: Q <- max(Q, mc_return(s)). With importance sampling (default) the logsumexp runs over
       [Q_rand - log U, Q_next - log pi(a|s'), Q_curr - log pi(a|s)], otherwise over [Q_rand, Q(s, a), Q_next,
       Q_curr]; ``ood_i = cql_temp * logsumexp(values / cql_temp)``, ``diff_i = clamp(ood_i - Q_i(s, a), min, max)``.
    5. ``loss_cql = cql_alpha * sum_i mean(diff_i)``; with ``cql_lagrange``:
       ``loss_cql = alpha' * cql_alpha * sum_i (mean(diff_i) - gap)`` (alpha' detached) and
       ``loss_alpha_prime = -alpha' * cql_alpha * sum_i (mean(diff_i) - gap) / 2`` (diffs detached).

    Gradient routing: ``sum(loss_*).backward()`` is one correct update. The actor term sees detached critic
    parameters (as in TorchRL's SAC) and a detached alpha, critic terms see detached policy samples, alpha terms see
    detached statistics, and alpha' is detached inside the critic's conservative term.

    Args:
        actor_network: stochastic actor with ``get_dist`` (reparameterised samples), e.g. a ``ProbabilisticActor``
            over ``TanhNormal``.
        qvalue_network: a single Q network reading observation keys and ``"action"``, writing ``"state_action_value"``
            (stacked ``num_qvalue_nets`` times, TorchRL's convention), or a native ensemble with an integer
            ``num_nets`` attribute writing ``[..., num_nets]`` (used as is).
        num_qvalue_nets: critics made from a single Q network. Default 2.
        loss_function: TD distance, ``"l2"`` (CORL's MSE, default), ``"l1"`` or ``"smooth_l1"``.
        alpha_init, fixed_alpha: initial entropy coefficient (1.0, CORL) and whether it stays fixed (False).
        target_entropy: ``"auto"`` (-action_dim, from ``action_spec`` or the batch) or a number.
        action_spec: bounded spec whose bounds hold the uniform CQL actions; default: the actor distribution's
            ``low``/``high`` (``TanhNormal``).
        backup_entropy: subtract alpha log pi(a'|s') in the TD target. Default False (CORL).
        cql_alpha: weight of the conservative term. Default 5.0. A plain attribute: settable at run time.
        cql_n_actions: actions per state for each of the three action sources. Default 10.
        cql_importance_sample, cql_temp: importance-sampled logsumexp (True) and its temperature (1.0).
        cql_lagrange, cql_target_action_gap, alpha_prime_init: learn alpha' so the gap approaches the target (False,
            -1.0; AntMaze: True, 0.8); CORL starts at log alpha' = 1, i.e. alpha' = e.
        cql_clip_diff_min, cql_clip_diff_max: clamp of the per-sample conservative gap. Default unbounded.
        cql_max_target_backup: max-target backup over ``cql_n_actions`` next actions. Default False.
        calibration: lift policy-action Q values to ``mc_return``. Default True. A plain attribute: settable at run
            time; ``switch_to_online(cql_alpha_online)`` turns it off and sets ``cql_alpha`` in one call.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample loss terms).

    Keys read: observation keys of the actor and critic, ``"action"``, ``("next", <observation keys>)``,
    ``("next", "reward")``, ``("next", "terminated")``, ``("next", "done")`` and ``"mc_return"`` ([..., 1]; only when
    ``calibration`` is on). Keys written: ``"td_error"`` (priority) in the input. Output: ``loss_actor``,
    ``loss_qvalue``, ``loss_cql``, ``loss_alpha`` (+ ``loss_alpha_prime``) and detached diagnostics ``alpha``,
    ``entropy``, ``q_value``, ``target_value``, ``q_random``, ``q_policy``, ``cql_diff``, ``calibration_fraction``,
    ``cql_alpha`` (+ ``alpha_prime``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 4), NormalParamExtractor())
        >>> actor = ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), in_keys=["observation", "action"])
        >>> loss = CalQLLoss(actor, critic, cql_alpha=5.0)
        >>> updater = SoftUpdate(loss, tau=0.005)  # moves target_qvalue_network_params; call updater.step() per update
        >>> batch = TensorDict({"observation": torch.randn(4, 3), "action": torch.rand(4, 2) * 2 - 1,
        ...     "mc_return": torch.full((4, 1), 100.0), ("next", "observation"): torch.randn(4, 3),
        ...     ("next", "reward"): torch.ones(4, 1), ("next", "done"): torch.zeros(4, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(4, 1, dtype=torch.bool)}, [4])
        >>> out = loss(batch)
        >>> float(out["calibration_fraction"])  # every policy-action Q is below a return of 100, so all are lifted
        1.0
        >>> loss.switch_to_online(cql_alpha_online=1.0)  # doctest: +ELLIPSIS
        CalQLLoss(...)
        >>> (loss.calibration, loss.cql_alpha)
        (False, 1.0)
    """

    @dataclass
    class _AcceptedKeys(DiffrlLossBase._AcceptedKeys):
        """The base's keys (``action``, ``state_action_value``, ``reward``, ``done``, ``terminated``, ``priority``)
        plus Cal-QL's own, changed with ``set_keys(name=key)``. The actor and the critics read the state under their
        own ``in_keys``, so ``observation`` and ``priority_weight`` are accepted but not read.

        Attributes:
            value: the next-state value handed to the value estimator. Default ``"state_value"``.
            log_prob: where the actor's log-probability is stored in metadata. Default ``"_log_prob"``.
            mc_return: the Monte-Carlo discounted return-to-go used by calibration. Default ``"mc_return"``.
        """

        value: NestedKey = "state_value"
        log_prob: NestedKey = "_log_prob"
        mc_return: NestedKey = "mc_return"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    loss_terms = ("actor", "alpha", "qvalue", "cql")  # forward's order; alpha and alpha' reuse the actor and cql terms

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: str | float = "auto",
        action_spec=None,
        backup_entropy: bool = False,
        cql_alpha: float = 5.0,
        cql_n_actions: int = 10,
        cql_importance_sample: bool = True,
        cql_temp: float = 1.0,
        cql_lagrange: bool = False,
        cql_target_action_gap: float = -1.0,
        alpha_prime_init: float = math.e,
        cql_clip_diff_min: float = -math.inf,
        cql_clip_diff_max: float = math.inf,
        cql_max_target_backup: bool = False,
        calibration: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_choice("loss_function", loss_function, ("l2", "l1", "smooth_l1"))
        _check_choice("reduction", reduction, ("mean", "sum", "none"))
        if cql_n_actions < 1:
            raise ValueError(f"cql_n_actions must be a positive integer, got {cql_n_actions}.")
        if cql_temp <= 0:
            raise ValueError(f"cql_temp must be > 0, got {cql_temp}.")
        if not (isinstance(target_entropy, (int, float)) or target_entropy == "auto"):
            raise ValueError(f"target_entropy must be 'auto' or a number, got {target_entropy!r}.")
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self._init_qvalue(qvalue_network, num_qvalue_nets)

        device = next(iter(self.actor_network_params.values(True, True))).device
        log_alpha = torch.tensor(math.log(alpha_init), device=device)
        if fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.register_parameter("log_alpha", torch.nn.Parameter(log_alpha))
        if cql_lagrange:
            self.register_parameter(
                "log_alpha_prime", torch.nn.Parameter(torch.tensor(math.log(alpha_prime_init), device=device))
            )
        self.target_entropy = target_entropy
        self.loss_function = loss_function
        self.reduction = reduction
        self.backup_entropy = backup_entropy
        self.cql_alpha = float(cql_alpha)
        self.cql_n_actions = int(cql_n_actions)
        self.cql_importance_sample = cql_importance_sample
        self.cql_temp = float(cql_temp)
        self.cql_lagrange = cql_lagrange
        if cql_lagrange:
            self.loss_terms = (*self.loss_terms, "alpha_prime")
        self.cql_target_action_gap = float(cql_target_action_gap)
        self.cql_clip_diff_min = float(cql_clip_diff_min)
        self.cql_clip_diff_max = float(cql_clip_diff_max)
        self.cql_max_target_backup = cql_max_target_backup
        self.calibration = bool(calibration)
        bounds = _spec_bounds(action_spec)
        # Buffers (None when unknown) so .to(device) moves the bounds with the loss.
        self.register_buffer("action_low", None if bounds is None else bounds[0])
        self.register_buffer("action_high", None if bounds is None else bounds[1])
        if target_entropy == "auto" and bounds is not None:
            self.target_entropy = -float(bounds[0].numel())

    # ---------------------------------------------------------------------------------------------- configuration
    def switch_to_online(self, cql_alpha_online: float | None = None) -> CalQLLoss:
        """The offline-to-online switch (CORL): calibration off and, when given, ``cql_alpha = cql_alpha_online``."""
        self.calibration = False
        if cql_alpha_online is not None:
            self.cql_alpha = float(cql_alpha_online)
        return self

    def _estimator_keys(self) -> dict[str, NestedKey]:
        # The target is a state value V'(s') (min over critics, max over samples), stored under ``value``.
        return {**super()._estimator_keys(), "value": self.tensor_keys.value}

    def _default_in_keys(self) -> list[NestedKey]:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *[("next", key) for key in self.actor_network.in_keys],
            *[key for key in self.qvalue_network.in_keys if key != self.tensor_keys.action],
        ]
        if self.calibration:
            keys.append(self.tensor_keys.mc_return)
        return list(dict.fromkeys(keys))

    def _declared_out_keys(self) -> list[str]:
        extra = ["loss_alpha_prime", "alpha_prime"] if self.cql_lagrange else []
        return [*_OUT_KEYS, *extra]

    # ---------------------------------------------------------------------------------------------- loss terms
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Actor, alpha, critic and conservative terms (the base's ``forward`` extended: the alpha term reads the actor
        term's log-probabilities and the alpha' term the conservative gaps)."""
        # The policy is evaluated once per state (s with gradients, s' without) and the critics once on the stacked
        # [data, random, current, next] actions, whose data-action column is also the TD regression's prediction.
        # Random draws keep the order of the separate terms (actor, TD target, CQL), so forward equals their sum.
        dist = self._policy_dist(tensordict)
        loss_actor, actor_meta = self._actor_loss(tensordict, dist)
        loss_alpha, _ = self.alpha_loss(actor_meta[self.tensor_keys.log_prob], tensordict)
        with torch.no_grad():
            next_dist = self._policy_dist(tensordict.get("next"))
        target = self._td_target(tensordict, next_dist)
        loss_cql, cql_meta, q_data = self._cql_loss(tensordict, dist, next_dist)
        loss_qvalue, q_meta = self._qvalue_regression(tensordict, q_data, target)
        tensordict.set(self.tensor_keys.priority, q_meta.pop("td_error"))  # max_i (Q_i - y)^2, as the base
        out = {
            "loss_actor": loss_actor,
            "loss_qvalue": loss_qvalue,
            "loss_cql": loss_cql,
            "loss_alpha": loss_alpha,
            "alpha": self._alpha.detach(),
            "entropy": -actor_meta[self.tensor_keys.log_prob].mean(),
            "cql_alpha": torch.tensor(self.cql_alpha),
            **q_meta,
            **{k: v for k, v in cql_meta.items() if k != "_diff_per_sample"},
        }
        if self.cql_lagrange:
            out["loss_alpha_prime"], _ = self.alpha_prime_loss(cql_meta["_diff_per_sample"], tensordict)
            out["alpha_prime"] = self._alpha_prime.detach()
        return TensorDict(out, batch_size=[])

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """``alpha * log pi(a_pi|s) - min_i Q_i(s, a_pi)`` with critic parameters and alpha detached."""
        return self._actor_loss(tensordict, self._policy_dist(tensordict))

    def _actor_loss(self, tensordict: TensorDictBase, dist) -> tuple[Tensor, dict]:
        action, log_prob = rsample_and_log_prob(dist)
        q_input = tensordict.select(*self.qvalue_network.in_keys, strict=False).set(self.tensor_keys.action, action)
        min_q = self._qvalues(q_input, self._cached_detached_qvalue_params).min(0).values
        loss = self._alpha.detach() * log_prob - min_q
        return self._reduce_loss(loss, tensordict), {self.tensor_keys.log_prob: log_prob.detach()}

    def alpha_loss(self, log_prob: Tensor, tensordict: TensorDictBase | None = None) -> tuple[Tensor, dict]:
        """``-log_alpha * (log pi + target_entropy)`` with the log-probability detached."""
        target_entropy = self.target_entropy
        if target_entropy == "auto":
            if tensordict is None:
                raise ValueError("target_entropy='auto' needs the batch to read the action size; pass tensordict.")
            target_entropy = -float(tensordict.get(self.tensor_keys.action).shape[-1])
        loss = -self.log_alpha * (log_prob.detach() + target_entropy)
        return self._reduce_loss(loss, tensordict), {}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """TD regression of every critic on ``r + gamma (1 - terminated) V'(s')`` from the target critics."""
        with torch.no_grad():
            next_dist = self._policy_dist(tensordict.get("next"))
        target = self._td_target(tensordict, next_dist)
        q_input = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        return self._qvalue_regression(tensordict, self._qvalues(q_input, self.qvalue_network_params), target)

    def _qvalue_regression(self, tensordict: TensorDictBase, q_pred: Tensor, target: Tensor) -> tuple[Tensor, dict]:
        """``q_pred`` [C, *B] (the critics at the data actions) regressed on ``target`` [*B]."""
        target = target.expand_as(q_pred)
        loss = distance_loss(q_pred, target, self.loss_function).sum(0)
        meta = {
            "td_error": self._td_error(q_pred, target),
            "q_value": q_pred.detach().mean(),
            "target_value": target.mean(),
        }
        return self._reduce_loss(loss, tensordict), meta

    def cql_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """The conservative term: calibrated, importance-sampled logsumexp minus the data-action value."""
        with torch.no_grad():
            dist, next_dist = self._policy_dist(tensordict), self._policy_dist(tensordict.get("next"))
        loss, meta, _ = self._cql_loss(tensordict, dist, next_dist)
        return loss, meta

    def _cql_loss(self, tensordict: TensorDictBase, dist, next_dist) -> tuple[Tensor, dict, Tensor]:
        """The conservative term, its diagnostics and the critics at the data actions ``[C, *B]`` (with gradients)."""
        n = self.cql_n_actions
        data_action = tensordict.get(self.tensor_keys.action)
        batch_shape = tensordict.batch_size
        with torch.no_grad():
            curr_actions, curr_log_prob = self._sample_n(dist, n)
            next_actions, next_log_prob = self._sample_n(next_dist, n)
            low, high = self._bounds(dist)
            rand_actions = low + (high - low) * torch.rand(*batch_shape, n, data_action.shape[-1], device=low.device)
            log_uniform = -torch.log(high - low).expand(data_action.shape[-1:]).sum()
        # One batched critic call at the current state for [data action, random, current-policy, next-policy].
        actions = torch.cat([data_action.unsqueeze(-2), rand_actions, curr_actions, next_actions], dim=-2)
        q_all = self._qvalues(self._at_state(tensordict, actions), self.qvalue_network_params)  # [C, *B, 1 + 3N]
        q_data, q_rand, q_curr, q_next = q_all.split([1, n, n, n], dim=-1)

        meta = {"q_random": q_rand.detach().mean(), "q_policy": torch.cat([q_curr, q_next], -1).detach().mean()}
        mc_return = self._mc_return(tensordict)
        if mc_return is not None:
            bound = mc_return.unsqueeze(-1)  # [*B, 1]: broadcast over critics and samples
            below = torch.cat([q_curr, q_next], -1).detach() < bound
            meta["calibration_fraction"] = below.float().mean()
            if self.calibration:
                q_curr = torch.maximum(q_curr, bound)
                q_next = torch.maximum(q_next, bound)
        else:
            meta["calibration_fraction"] = torch.tensor(float("nan"))

        if self.cql_importance_sample:
            cat = torch.cat(
                [q_rand - log_uniform, q_next - next_log_prob.unsqueeze(0), q_curr - curr_log_prob.unsqueeze(0)], -1
            )
        else:
            cat = torch.cat([q_rand, q_data, q_next, q_curr], -1)
        ood = torch.logsumexp(cat / self.cql_temp, dim=-1) * self.cql_temp  # [C, *B]
        diff = (ood - q_data.squeeze(-1)).clamp(self.cql_clip_diff_min, self.cql_clip_diff_max)
        meta["cql_diff"] = diff.detach().mean()
        meta["_diff_per_sample"] = diff
        reduced = torch.stack([self._reduce_loss(d, tensordict) for d in diff.unbind(0)])  # [C] or [C, *B]
        if self.cql_lagrange:
            loss = self._alpha_prime.detach() * self.cql_alpha * (reduced - self.cql_target_action_gap).sum(0)
        else:
            loss = self.cql_alpha * reduced.sum(0)
        return loss, meta, q_data.squeeze(-1)

    def alpha_prime_loss(self, diff: Tensor, tensordict: TensorDictBase | None = None) -> tuple[Tensor, dict]:
        """Lagrange dual: ``-alpha' * cql_alpha * sum_i (mean(diff_i) - gap) / 2`` with the gaps detached."""
        if not self.cql_lagrange:
            raise RuntimeError("alpha_prime_loss needs cql_lagrange=True; build the loss with cql_lagrange=True.")
        reduced = torch.stack([self._reduce_loss(d, tensordict) for d in diff.detach().unbind(0)])
        loss = -0.5 * self._alpha_prime * self.cql_alpha * (reduced - self.cql_target_action_gap).sum(0)
        return loss, {}

    # ---------------------------------------------------------------------------------------------- helpers
    @property
    def _alpha(self) -> Tensor:
        return self.log_alpha.exp()

    @property
    def _alpha_prime(self) -> Tensor:
        return self.log_alpha_prime.exp().clamp(0.0, _ALPHA_PRIME_MAX)

    @property
    @_cache_values
    def _cached_detached_qvalue_params(self) -> TensorDictParams:
        return self.qvalue_network_params.detach()

    def _policy_dist(self, tensordict: TensorDictBase):
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            return self.actor_network.get_dist(tensordict.select(*self.actor_network.in_keys, strict=False))

    @staticmethod
    def _sample_n(dist, n: int) -> tuple[Tensor, Tensor]:
        """n samples per state, sample dimension moved after the batch: actions [*B, n, A], log-probs [*B, n]."""
        action, log_prob = sample_and_log_prob(dist, (n,))
        return action.movedim(0, -2), log_prob.movedim(0, -1)

    def _at_state(self, tensordict: TensorDictBase, actions: Tensor) -> TensorDictBase:
        """The critic's state inputs of ``tensordict`` repeated along a new last batch dim, with ``actions`` set."""
        keys = [k for k in self.qvalue_network.in_keys if k != self.tensor_keys.action]
        state = tensordict.select(*keys, strict=False)
        state = state.unsqueeze(state.ndim).expand(*state.batch_size, actions.shape[-2])
        return state.set(self.tensor_keys.action, actions)

    def _td_target(self, tensordict: TensorDictBase, next_dist) -> Tensor:
        with torch.no_grad():
            next_td = tensordict.get("next")
            samples = self.cql_n_actions if self.cql_max_target_backup else 1
            next_actions, next_log_prob = self._sample_n(next_dist, samples)
            q_next = self._qvalues(self._at_state(next_td, next_actions), self.target_qvalue_network_params)
            q_next = q_next.min(0).values  # [*B, samples]: min over critics first (CORL), then max over samples
            value, index = q_next.max(-1, keepdim=True)
            if self.backup_entropy:
                value = value - self._alpha * next_log_prob.gather(-1, index)
            reward = tensordict.get(("next", self.tensor_keys.reward))
            keys = self.tensor_keys
            estimate_td = tensordict.select(("next", keys.reward), ("next", keys.done), ("next", keys.terminated))
            estimate_td.set(("next", self.tensor_keys.value), value.reshape(reward.shape))
            return self.value_estimator.value_estimate(estimate_td).reshape(reward.shape).squeeze(-1)

    def _mc_return(self, tensordict: TensorDictBase) -> Tensor | None:
        key = self.tensor_keys.mc_return
        value = tensordict.get(key, None)
        if value is None:
            if self.calibration:
                raise KeyError(
                    f"CalQLLoss with calibration=True reads the Monte-Carlo return-to-go under {key!r}, which the "
                    f"batch does not have (keys: {sorted(map(str, tensordict.keys(True, True)))}). Load data with "
                    "diffrl.data.load_dataset (it adds 'mc_return'), point the loss at your key with "
                    "set_keys(mc_return=...), or turn calibration off."
                )
            return None
        return value.reshape(tensordict.batch_size)

    def _bounds(self, dist) -> tuple[Tensor, Tensor]:
        if self.action_low is not None:
            return self.action_low, self.action_high
        low, high = getattr(dist, "low", None), getattr(dist, "high", None)
        if low is None or high is None:
            raise ValueError(
                f"CalQLLoss samples uniform actions in the action bounds, but the actor's {type(dist).__name__} has "
                "no low/high. Pass action_spec=<a Bounded spec> to CalQLLoss, or use a TanhNormal actor."
            )
        return torch.as_tensor(low).detach(), torch.as_tensor(high).detach()


def _spec_bounds(action_spec) -> tuple[Tensor, Tensor] | None:
    if action_spec is None:
        return None
    space = getattr(action_spec, "space", None)
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        raise ValueError(
            f"action_spec must be bounded (e.g. torchrl.data.Bounded), got {type(action_spec).__name__}; "
            "pass a Bounded spec or leave action_spec=None to read the bounds from a TanhNormal actor."
        )
    return low.detach().clone(), high.detach().clone()


def _check_choice(name: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {accepted}, got {value!r}.")
