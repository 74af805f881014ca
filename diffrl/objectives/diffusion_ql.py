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
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor

from diffrl import registry
from diffrl.modules.diffusion_actor import check_precision, precision_context, sampling_overrides
from diffrl.objectives.common import DiffrlLossBase

__all__ = ["DiffusionQLLoss"]

_APPROXIMATIONS = ("none", "edp")


@registry.register("loss", "diffusion_ql")
class DiffusionQLLoss(DiffrlLossBase):
    r"""Diffusion-QL: denoising behaviour cloning plus normalised Q maximisation.

    Paper: Wang, Hunt, Zhou, "Diffusion Policies as an Expressive Policy Class for Offline Reinforcement Learning",
    ICLR 2023. Specification: docs/algorithms.md section 2.

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

    Fast options (departures from the paper, all off by default; quality measured against the faithful update on the
    2D bandit and the pendulum default, ``benchmarks/README.md``):

    * ``action_approximation="edp"`` (Kang et al., "Efficient Diffusion Policies for Offline Reinforcement
      Learning", NeurIPS 2023): the Q term is evaluated at ``a0_hat = (a_t - sqrt(1 - abar_t) eps_theta(a_t, t, s))
      / sqrt(abar_t)`` (clamped to the action bounds), reconstructed in one step from the *noised dataset action*
      of the BC term and its network call, instead of at a fresh sample differentiated through all T reverse steps.
      The actor step then costs one network call instead of T + 1. The policy is no longer pushed along its own
      sampling chain, only through its one-step denoiser around the data, so it stays closer to the behaviour
      support than the paper's policy.
    * ``target_sampler="ddim"`` with ``target_sampler_steps=K``: the EMA actor draws the critic-target action with
      a K-step DDIM sampler instead of the paper's T-step ancestral sampler (EDP uses DPM-Solver there). The target
      action then follows a different (deterministic given ``x_T`` at DDIM's eta 0) distribution.
    * ``precision="bf16"``: the diffusion actor's network calls (BC term, policy samples, target samples) run under
      bf16 autocast; the critics, the regression onto the target and the Q term's arithmetic stay float32, so TD
      errors are not rounded to bf16's three significant digits. Only on hardware with native bf16 matrix units (AMX
      or AVX512_BF16 CPUs, CUDA GPUs): elsewhere the constructor raises, since bf16 would be slower.

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
        action_approximation: ``"none"`` (the paper: the full differentiable chain) or ``"edp"`` (one-step
            reconstruction, see above). Default ``"none"``.
        target_sampler: sampler of the critic-target action (``"ddim"``, ``"diffusion_ql"``, ...); None: the
            actor's own. Default None.
        target_sampler_steps: steps of that sampler (fewer than T needs DDIM, the default then); None: all.
        precision: ``"fp32"`` or ``"bf16"`` (the actor's network calls under bf16 autocast, see above). Default
            ``"fp32"``.
        gamma: discount; shorthand for ``make_value_estimator(gamma=...)``. Default 0.99.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Default ``"mean"``.

    Reads: ``observation``, ``action``, ``("next", "observation")``, ``("next", "reward")``,
    ``("next", "done")``, ``("next", "terminated")`` (names configurable with :meth:`set_keys`).
    Writes: ``loss_actor``, ``loss_qvalue`` and the detached diagnostics ``bc_loss``, ``q_term``, ``q_policy``,
    ``maximised_critic``, ``q_data``, ``target_value`` (``loss.out_keys``); ``td_error`` (``max_i (Q_i - y)^2``) is
    written into the input for prioritised replay.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from diffrl import registry
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> actor = registry.build("actor", {"name": "diffusion", "hidden_sizes": [32, 32]}, obs_dim=3, action_dim=2)
        >>> critic = registry.build("critic", {"name": "twin_q", "hidden_sizes": [32, 32]}, obs_dim=3, action_dim=2)
        >>> loss = registry.build("loss", {"name": "diffusion_ql", "eta": 2.5},  # eta: the Q term's weight
        ...                       actor_network=actor, qvalue_network=critic)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(8, 3), ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(batch)
        >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_qvalue']
    """

    loss_terms = ("qvalue", "actor")  # the critic term first: its target draws come before the actor's
    diagnostic_keys = ("bc_loss", "q_term", "q_policy", "maximised_critic", "q_data", "target_value")

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
        action_approximation: str = "none",
        target_sampler: str | None = None,
        target_sampler_steps: int | None = None,
        precision: str = "fp32",
        gamma: float | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self._require_diffusion_actor(actor_network, ("denoising_loss", "sample"))
        if q_normalization not in ("policy", "dataset"):
            raise ValueError(f"q_normalization must be 'policy' or 'dataset', got {q_normalization!r}.")
        if num_backup_samples < 1:
            raise ValueError(f"num_backup_samples must be >= 1, got {num_backup_samples}.")
        if action_approximation not in _APPROXIMATIONS:
            raise ValueError(
                f"action_approximation must be one of {_APPROXIMATIONS}, got {action_approximation!r}; 'none' is the "
                "paper's full chain, 'edp' the one-step reconstruction."
            )
        self._target_sampling = sampling_overrides(actor_network, target_sampler, target_sampler_steps)
        device = next((p.device for p in actor_network.parameters()), torch.device("cpu"))
        check_precision(precision, device)
        self.action_approximation = action_approximation
        self.precision = precision
        self.convert_to_functional(actor_network, "actor_network", create_target_params=True)
        self._init_qvalue(qvalue_network, num_qvalue_nets)
        if self.num_qvalue_nets < 2:
            raise ValueError("Diffusion-QL normalises one critic by another: it needs at least 2 Q networks.")
        self.eta = float(eta)
        self.q_normalization = q_normalization
        self.coin_flip = coin_flip
        self.max_q_backup = max_q_backup
        self.num_backup_samples = int(num_backup_samples)
        self.register_buffer("_fixed_pick", torch.tensor([0, 1]), persistent=False)
        self._init_regression(loss_function, reduction, gamma)

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
        weights, observation, action = self._weighted_batch(tensordict)
        next_observation = self._read(tensordict, ("next", self.tensor_keys.observation))
        with torch.no_grad():
            num_samples = self.num_backup_samples if self.max_q_backup else None
            with (
                self.target_actor_network_params.to_module(self.actor_network, preserve_module_state=False),
                precision_context(self.precision, next_observation.device),
            ):
                next_action = self.actor_network.sample(
                    next_observation, num_samples=num_samples, **self._target_sampling
                )
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
        weights, observation, action = self._weighted_batch(tensordict)
        with (
            self.actor_network_params.to_module(self.actor_network, preserve_module_state=False),
            precision_context(self.precision, observation.device),
        ):
            if self.action_approximation == "edp":
                bc_loss, policy_action = self.actor_network.denoising_loss(
                    observation, action, return_reconstruction=True
                )
            else:
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
