"""Diffusion-QL (Wang, Hunt and Zhou, "Diffusion Policies as an Expressive Policy Class for Offline RL", ICLR 2023).

The policy is a conditional DDPM over actions. Its loss is the denoising (behaviour-cloning) loss plus a Q term
normalised by the magnitude of Q, so the same ``eta`` works across reward scales; the critics are twin Q networks
trained by TD(0) against an EMA copy of the actor. Defaults follow the official code, which produced the published
numbers: the Q term is normalised by the *other* critic's |Q| at the policy's own actions, with a fresh coin flip each
step choosing which critic is maximised (``q_normalization="policy"``); the paper's normalisation by |Q| at dataset
actions is ``q_normalization="dataset"``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from torch import Tensor

from diffrl import registry
from diffrl.objectives.qvalue import ActorCriticLoss

__all__ = ["DiffusionQLLoss"]


@registry.register("loss", "diffusion_ql")
class DiffusionQLLoss(ActorCriticLoss):
    r"""Diffusion-QL: denoising behaviour cloning plus normalised Q maximisation.

    Paper: Wang, Hunt, Zhou, "Diffusion Policies as an Expressive Policy Class for Offline Reinforcement Learning",
    ICLR 2023. Specification: ALGORITHMS.md section 2.

    Math, per batch of transitions (s, a, r, s', terminated):

    1. Critic target: a' ~ pi_EMA(. | s') (the target actor, sampled with noise); with ``max_q_backup`` draw
       ``num_backup_samples`` a' per s' and take each critic's maximum over them. ``y = r + (1 - terminated) *
       gamma * min_i Q'_i(s', a')``, no gradient.
    2. ``loss_qvalue = sum_i mean (Q_i(s, a) - y)^2``.
    3. Actor: ``bc = mean || eps_theta(a_t, t, s) - eps ||^2`` on dataset actions; a fresh differentiable sample
       ``a_pi ~ pi_theta(. | s)`` through the whole reverse chain; a coin flip picks critic i and j = the other;
       ``q_term = - mean Q_i(s, a_pi) / mean |Q_j(s, a_pi)|`` (the denominator detached; with
       ``q_normalization="dataset"`` it is ``mean |Q_j(s, a)|`` at dataset actions);
       ``loss_actor = bc + eta * q_term``. Critic parameters are detached here: the actor term never trains a critic.

    Summing ``loss_actor + loss_qvalue`` and calling ``backward`` once is correct. The official code updates the
    critic first and then the actor against the just-updated critic; call :meth:`qvalue_loss`, step the critic, then
    :meth:`actor_loss` to reproduce that order (``recipes/diffusion_ql.py`` does).

    Both terms compile whole: ``torch.compile(loss.actor_loss, fullgraph=True)`` (and the same for
    :meth:`qvalue_loss`) captures the term, forward and backward, in one graph, since nothing in them synchronises
    with the host (the coin flip stays a tensor). On CPU that fuses Mish and the sampler's step arithmetic into a few
    loops (``recipes/diffusion_ql.py compile=true``; figures in ``benchmarks/README.md``).

    Target networks are ``target_actor_network_params`` (the EMA actor) and ``target_qvalue_network_params``; drive
    them with TorchRL's ``SoftUpdate`` or with :func:`diffrl.objectives.updaters.diffusion_ql_updater` (critic tau
    0.005 every step; actor EMA 0.995 every 5 steps from step 1000).

    Args:
        actor_network: a diffusion actor (``registry.build("actor", "diffusion", ...)``) providing
            ``denoising_loss(observation, action)`` and ``sample(observation, num_samples=None, grad=False)``.
        qvalue_network: a single Q network (duplicated ``num_qvalue_nets`` times) or a native ensemble such as the
            ``twin_q`` critic.

    Keyword Args:
        num_qvalue_nets: members when ``qvalue_network`` is a single Q network. Default 2.
        eta: weight of the Q term. Default 1.0 (Gym locomotion).
        q_normalization: ``"policy"`` (official code) or ``"dataset"`` (paper). Default ``"policy"``.
        coin_flip: pick the maximised critic at random each step (official). If False, critic 0 is maximised and
            critic 1 normalises. Default True.
        max_q_backup: max over ``num_backup_samples`` target actions per next state (AntMaze). Default False.
        num_backup_samples: target actions per next state for the max backup. Default 10.
        loss_function: critic regression loss, ``"l2"`` (official), ``"smooth_l1"`` or ``"l1"``. Default ``"l2"``.
        gamma: discount; shorthand for ``make_value_estimator(gamma=...)``. Default 0.99.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Default ``"mean"``.

    Reads: ``observation``, ``action``, ``("next", "observation")``, ``("next", "reward")``,
    ``("next", "done")``, ``("next", "terminated")`` (names configurable with :meth:`set_keys`).
    Writes: ``loss_actor``, ``loss_qvalue`` and the detached diagnostics ``bc_loss``, ``q_term``, ``q_policy``,
    ``q_data``, ``target_value``, ``maximised_critic``; ``td_error`` is written into the input for prioritised replay.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from diffrl import registry
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> actor = registry.build("actor", {"name": "diffusion", "hidden_sizes": [32, 32]}, obs_dim=3, action_dim=2)
        >>> critic = registry.build("critic", {"name": "twin_q", "hidden_sizes": [32, 32]}, obs_dim=3, action_dim=2)
        >>> loss = registry.build("loss", "diffusion_ql", actor_network=actor, qvalue_network=critic)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(8, 3), ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(batch)
        >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue']
    """

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        eta: float = 1.0,
        q_normalization: str = "policy",
        coin_flip: bool = True,
        max_q_backup: bool = False,
        num_backup_samples: int = 10,
        loss_function: str = "l2",
        gamma: float | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self._require_diffusion_actor(actor_network, ("denoising_loss", "sample"))
        if q_normalization not in ("policy", "dataset"):
            raise ValueError(f"q_normalization must be 'policy' or 'dataset', got {q_normalization!r}.")
        if num_backup_samples < 1:
            raise ValueError(f"num_backup_samples must be >= 1, got {num_backup_samples}.")
        self._in_keys = None
        self.convert_to_functional(actor_network, "actor_network", create_target_params=True)
        self._init_qvalue(qvalue_network, num_qvalue_nets)
        if self.num_qvalue_nets < 2:
            raise ValueError("Diffusion-QL normalises one critic by another: it needs at least 2 Q networks.")
        self.eta = float(eta)
        self.q_normalization = q_normalization
        self.coin_flip = coin_flip
        self.max_q_backup = max_q_backup
        self.num_backup_samples = int(num_backup_samples)
        self.loss_function = loss_function
        self.reduction = reduction
        self.register_buffer("_fixed_pick", torch.tensor([0, 1]), persistent=False)
        if gamma is not None:
            self.make_value_estimator(gamma=gamma)

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _pick_critics(self) -> Tensor:
        """Indices ``[maximised, normaliser]``: a fair coin from torch's global generator, so seeding reproduces it.

        A tensor rather than Python ints, so the choice never synchronises with the host and ``torch.compile`` keeps
        the whole actor term in one graph.
        """
        if not self.coin_flip:
            return self._fixed_pick
        first = torch.randint(0, 2, (1,), device=self._fixed_pick.device)
        return torch.cat([first, 1 - first])

    # -- terms ------------------------------------------------------------------------------------------------------
    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD(0) regression of every critic onto ``r + gamma (1 - terminated) min_i Q'_i(s', a' ~ pi_EMA)``."""
        weights = self._maybe_get_priority_weight(tensordict)
        observation = self._read(tensordict, self.tensor_keys.observation)
        action = self._read(tensordict, self.tensor_keys.action)
        next_observation = self._read(tensordict, ("next", self.tensor_keys.observation))
        with torch.no_grad():
            num_samples = self.num_backup_samples if self.max_q_backup else None
            with self.target_actor_network_params.to_module(self.actor_network, preserve_module_state=False):
                next_action = self.actor_network.sample(next_observation, num_samples=num_samples)
            if self.max_q_backup:
                # [*B, N, A] candidates -> each critic's max over candidates, then the min over critics
                repeated = next_observation.unsqueeze(-2).expand(*next_action.shape[:-1], next_observation.shape[-1])
                next_q = self._qvalues(self._q_input(repeated, next_action), self.target_qvalue_network_params).amax(-1)
            else:
                next_q = self._qvalues(self._q_input(next_observation, next_action), self.target_qvalue_network_params)
            target_value = self._td0_target(tensordict, next_q.min(0).values)
        return self._critic_regression(tensordict, observation, action, target_value, weights)

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising BC loss plus ``eta`` times the normalised Q term at fresh differentiable policy samples."""
        weights = self._maybe_get_priority_weight(tensordict)
        observation = self._read(tensordict, self.tensor_keys.observation)
        action = self._read(tensordict, self.tensor_keys.action)
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            bc_loss = self.actor_network.denoising_loss(observation, action)
            policy_action = self.actor_network.sample(observation, grad=True)
        critic_params = self.qvalue_network_params.detach()
        q_policy = self._qvalues(self._q_input(observation, policy_action), critic_params)
        picked = self._pick_critics()
        q_maximised, q_normaliser = q_policy.index_select(0, picked).unbind(0)
        if self.q_normalization == "policy":
            scale = q_normaliser.abs().mean().detach()
        else:
            with torch.no_grad():
                q_data = self._qvalues(self._q_input(observation, action), critic_params)
            scale = q_data.index_select(0, picked[1:]).abs().mean()
        q_term = -q_maximised / scale
        loss = self._reduce_loss(bc_loss + self.eta * q_term, tensordict=tensordict, weights=weights)
        metadata = {
            "bc_loss": bc_loss.detach().mean(),
            "q_term": q_term.detach().mean(),
            "q_policy": q_maximised.detach().mean(),
            "maximised_critic": picked[0].detach(),
        }
        return loss, metadata

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Both terms on one batch; ``loss_actor + loss_qvalue`` is the whole objective."""
        loss_qvalue, metadata_q = self.qvalue_loss(tensordict)
        loss_actor, metadata_actor = self.actor_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, metadata_q.pop("td_error"))
        return TensorDict({"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, **metadata_actor, **metadata_q})
