"""Q-Score Matching (Psenka, Escontrela, Abbeel and Ma, "Learning a Diffusion Model Policy from Rewards via
Q-Score Matching", ICML 2024).

The policy's noise prediction is regressed onto the action-gradient of Q at noised replay actions, so the reverse
chain climbs Q without back-propagating through the sampler and without a behaviour-cloning term. Sign convention
(the official code; its README prints the opposite): ``eps_theta(a_t, t, s)`` is matched to ``-M_q * grad_a Q(s, a_t)``,
because a DDPM step moves *against* the predicted noise, hence *along* grad Q.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule

from diffrl import registry
from diffrl.objectives.common import DiffrlLossBase

__all__ = ["QScoreMatchingLoss"]


@registry.register("loss", "qsm")
class QScoreMatchingLoss(DiffrlLossBase):
    r"""Q-Score Matching: match the diffusion policy's noise prediction to ``-M_q * grad_a Q``.

    Paper: Psenka et al., "Learning a Diffusion Model Policy from Rewards via Q-Score Matching", ICML 2024.
    Specification: docs/algorithms.md section 3. No behaviour cloning, no EMA actor, no target actor.

    Math, per batch (s, a, r, s', terminated) from the replay buffer:

    1. Critic target: ``a' = clip(pi_theta(s') + N(0, target_noise^2))`` sampled with the online actor (no
       gradient); ``y = r + gamma (1 - terminated) min_i Q'_i(s', a')``; ``loss_qvalue = sum_i mean (Q_i(s, a) - y)^2``.
    2. Actor: ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps``;
       ``g = mean_i grad_a Q_i(s, a_t)`` (no gradient to the critics; ``critic_reduction="min"`` uses the min);
       ``loss_actor = mean || eps_theta(a_t, t, s) + M_q g ||^2``. The forward noise ``eps`` is not a target, and
       the target does not depend on t.

    The official loop updates the critic on a batch and then the actor against the updated critic; call
    :meth:`qvalue_loss`, step, then :meth:`actor_loss` for that order, or sum the ``loss_*`` entries of
    ``forward`` and step once.

    Args:
        actor_network: a diffusion actor providing ``add_noise(action, step)`` (the forward process),
            ``predict_noise(noisy_action, step, observation)``, ``sample(observation, ...)`` and ``num_steps``.
        qvalue_network: a single Q network (duplicated ``num_qvalue_nets`` times) or a native ensemble (``twin_q``).

    Keyword Args:
        num_qvalue_nets: members when ``qvalue_network`` is a single Q network. Default 2.
        score_scale: ``M_q``. Default 50 (120 suggested for harder tasks). Choose it so that ``M_q * |grad Q|`` is of
            order 1.
        target_noise: std of the Gaussian noise added to target actions. Default 0.1.
        critic_reduction: ``"mean"`` (official) or ``"min"`` over critics for the score target. Default ``"mean"``.
        loss_function: critic regression loss. Default ``"l2"``.
        gamma: discount, shorthand for ``make_value_estimator(gamma=...)``. Default 0.99.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Reads ``observation``, ``action``, ``("next", "observation")``, ``("next", "reward")``, ``("next", "done")``,
    ``("next", "terminated")``; returns ``loss_actor``, ``loss_qvalue`` and the detached diagnostics ``score_norm``,
    ``q_data``, ``target_value`` (``loss.out_keys``); ``td_error`` (``max_i (Q_i - y)^2``) is written into the input
    for prioritised replay.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from diffrl import registry
        >>> _ = torch.manual_seed(0)
        >>> actor = registry.build("actor", {"name": "diffusion", "network": "qsm"}, obs_dim=3, action_dim=2)
        >>> critic = registry.build("critic", "twin_q", obs_dim=3, action_dim=2)
        >>> loss = registry.build("loss", "qsm", actor_network=actor, qvalue_network=critic)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(8, 3), ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(batch)
        >>> (out["loss_actor"] + out["loss_qvalue"]).backward()
        >>> bool(out["score_norm"] > 0)
        True
    """

    loss_terms = ("qvalue", "actor")  # the critic term first: its target draws come before the actor's
    diagnostic_keys = ("score_norm", "q_data", "target_value")

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        score_scale: float = 50.0,
        target_noise: float = 0.1,
        critic_reduction: str = "mean",
        loss_function: str = "l2",
        gamma: float | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self._require_diffusion_actor(actor_network, ("predict_noise", "sample", "add_noise"))
        if critic_reduction not in ("mean", "min"):
            raise ValueError(f"critic_reduction must be 'mean' or 'min', got {critic_reduction!r}.")
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self._init_qvalue(qvalue_network, num_qvalue_nets)
        self.score_scale = float(score_scale)
        self.target_noise = float(target_noise)
        self.critic_reduction = critic_reduction
        self._init_regression(loss_function, reduction, gamma)

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD(0) regression onto ``r + gamma (1 - terminated) min_i Q'_i(s', clip(pi(s') + noise))``."""
        weights, observation, action = self._weighted_batch(tensordict)
        next_observation = self._read(tensordict, ("next", self.tensor_keys.observation))
        with torch.no_grad():
            with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
                next_action = self.actor_network.sample(next_observation)
            low, high = self.actor_network.action_low, self.actor_network.action_high
            next_action = next_action + self.target_noise * torch.randn_like(next_action)
            next_action = torch.maximum(torch.minimum(next_action, high), low)
            next_q = self._qvalues(self._q_input(next_observation, next_action), self.target_qvalue_network_params)
            target_value = self._td0_target(tensordict, next_q.min(0).values)
        return self._critic_regression(tensordict, observation, action, target_value, weights)

    def score_target(self, observation: torch.Tensor, noisy_action: torch.Tensor) -> torch.Tensor:
        """``-M_q * grad_a Q(s, a_t)`` with the critics' mean (or min), detached from every parameter."""
        params = self.qvalue_network_params.detach()

        def q_sum(action: torch.Tensor) -> torch.Tensor:
            q = self._qvalues(self._q_input(observation, action), params)
            return (q.mean(0) if self.critic_reduction == "mean" else q.min(0).values).sum()

        # torch.func.grad rather than torch.autograd.grad: torch.compile traces it in one graph (no graph break)
        return -self.score_scale * torch.func.grad(q_sum)(noisy_action.detach())

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Regress ``eps_theta(a_t, t, s)`` onto the score target at forward-noised replay actions."""
        weights, observation, action = self._weighted_batch(tensordict)
        step = torch.randint(0, self.actor_network.num_steps, action.shape[:-1], device=action.device)
        noisy_action, _ = self.actor_network.add_noise(action, step)  # the forward noise is not a target in QSM
        target = self.score_target(observation, noisy_action)
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            predicted = self.actor_network.predict_noise(noisy_action, step, observation)
        loss = (predicted - target).pow(2).mean(-1)
        metadata = {"score_norm": target.norm(dim=-1).mean()}
        return self._reduce_loss(loss, tensordict=tensordict, weights=weights), metadata
