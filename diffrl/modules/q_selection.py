"""Q-selection: sample N candidate actions per observation from a diffusion actor and pick one by a critic's value.

This is Diffusion-QL's evaluation policy (the official code repeats the state 50 times, scores the candidates with
the minimum of its two critics and draws one with ``softmax(Q)``, no temperature). Here the candidate count, the
ensemble reduction, the temperature and argmax-vs-softmax are options.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.modules import ValueOperator

from diffrl.modules.diffusion_actor import check_precision, deterministic_mode, precision_context, sampling_overrides

__all__ = ["QSelectionActor"]

_SELECTIONS = ("softmax", "argmax")
_REDUCTIONS = ("min", "mean", "max")


class QSelectionActor(TensorDictModuleBase):
    """Pick one of ``num_candidates`` actor samples per observation by the critic's value.

    Steps, for an observation ``s`` (``[*B, S]``):

    1. ``a_1..a_N = actor.sample(s, num_samples=N)`` (``[*B, N, A]``);
    2. ``q_n = reduce_m Q_m(s, a_n)`` over the critic's members (last dim of its output; ``min`` by default);
    3. RANDOM mode: ``softmax`` draws ``n ~ softmax(q / temperature)`` (``temperature=1`` is the official rule),
       ``argmax`` takes the best; DETERMINISTIC mode (and MODE/MEAN/MEDIAN): the candidates come from the actor's fixed
       noise (``sample(..., deterministic=True)``) and the best one is taken, so the action is a deterministic
       function of ``s`` (the mode of the selection distribution).

    ``torch.compile(policy.select, fullgraph=True)`` captures a stochastic selection (sampling chain, critic,
    softmax draw) in one graph; in deterministic mode the fixed noise is made outside the graph.

    Args:
        actor: a ``DiffusionActor`` (anything with ``sample(observation, num_samples=, deterministic=)``, ``in_keys``
            and ``out_keys``).
        critic: a TensorDict module reading the actor's observation and action keys and writing ``value_key`` with a
            trailing member dim (``twin_q``: ``[*B, M]``; ``q``: ``[*B, 1]``).
        num_candidates: N. Default 50.
        selection: ``"softmax"`` (default) or ``"argmax"``.
        temperature: softmax temperature. Default 1.
        reduce: ``"min"`` (default), ``"mean"`` or ``"max"`` over the critic's members.
        value_key: the critic's output key. Default ``"state_action_value"``.
        default_interaction_type: behaviour outside any exploration context, ``"random"`` (default) or
            ``"deterministic"``.
        sampler: the candidates' sampler instead of the actor's own, e.g. ``"ddim"`` (a departure from Diffusion-QL,
            whose evaluation uses its training sampler). Default None: the actor's.
        inference_steps: the candidates' number of sampling steps (fewer than the actor's ``num_steps`` needs DDIM,
            the default then). Default None: the actor's.
        precision: ``"fp32"`` (default) or ``"bf16"``: the candidates are sampled under bf16 autocast (the critic
            stays float32); only on hardware with native bf16 matrix units, elsewhere the constructor raises. At
            50 candidates for one observation it was slower than float32 on an AMX CPU (benchmarks/README.md): the
            products are too small to repay the casts.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> from diffrl.modules.critics import twin_q
        >>> from diffrl.modules.diffusion_actor import DiffusionActor
        >>> actor = DiffusionActor(obs_dim=3, action_dim=2, hidden_sizes=(16, 16))
        >>> policy = QSelectionActor(actor, twin_q(obs_dim=3, action_dim=2, hidden_sizes=(16,)), num_candidates=8)
        >>> td = TensorDict({"observation": torch.randn(4, 3)}, batch_size=[4])
        >>> policy(td)["action"].shape
        torch.Size([4, 2])
        >>> with set_exploration_type(ExplorationType.DETERMINISTIC):
        ...     torch.equal(policy(td.clone())["action"], policy(td.clone())["action"])
        True
    """

    def __init__(
        self,
        actor: TensorDictModuleBase,
        critic: TensorDictModuleBase,
        *,
        num_candidates: int = 50,
        selection: str = "softmax",
        temperature: float = 1.0,
        reduce: str = "min",
        value_key: NestedKey = "state_action_value",
        default_interaction_type: str = "random",
        sampler: str | None = None,
        inference_steps: int | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if selection not in _SELECTIONS:
            raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}.")
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}.")
        if not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}; use selection='argmax' for 0.")
        if default_interaction_type not in ("random", "deterministic"):
            raise ValueError(
                f"default_interaction_type must be 'random' or 'deterministic', got {default_interaction_type!r}."
            )
        self._sampling = sampling_overrides(actor, sampler, inference_steps)
        check_precision(precision, next((p.device for p in actor.parameters()), torch.device("cpu")))
        self.precision = precision
        self.actor = actor
        self.critic = critic
        self.num_candidates = num_candidates
        self.selection = selection
        self.temperature = float(temperature)
        self.reduce = reduce
        self.value_key = value_key
        self.default_interaction_type = default_interaction_type
        self.in_keys = list(actor.in_keys)
        self.out_keys = list(actor.out_keys)
        # A plain TensorDictModule critic reading (observation, action) and writing only value_key can be called on
        # tensors directly; anything else (sequences, probabilistic or multi-output critics) goes through TensorDict.
        reads = [self.in_keys[0], self.out_keys[0]]
        keys_match = list(critic.in_keys) == reads and list(critic.out_keys) == [value_key]
        direct = type(critic) in (TensorDictModule, ValueOperator) and keys_match
        self._direct_critic = critic.module if direct else None

    def scores(self, observation: Tensor, candidates: Tensor) -> Tensor:
        """Reduced critic values ``[*B, N]`` of candidates ``[*B, N, A]`` at observations ``[*B, S]``."""
        obs = observation.unsqueeze(-2).expand(*candidates.shape[:-1], observation.shape[-1])
        if self._direct_critic is not None:
            # One tensor call, no TensorDict round trip: that costs more than the critic itself at 50 candidates.
            values = self._direct_critic(obs, candidates)
        else:
            td = TensorDict(
                {self.actor.in_keys[0]: obs, self.actor.out_keys[0]: candidates}, batch_size=candidates.shape[:-1]
            )
            values = self.critic(td).get(self.value_key)
        if values.shape[: candidates.ndim - 1] != candidates.shape[:-1] or values.ndim != candidates.ndim:
            raise ValueError(
                f"the critic's {self.value_key!r} must have shape [*B, N, members] for candidates of shape "
                f"{tuple(candidates.shape)}, got {tuple(values.shape)}."
            )
        if self.reduce == "min":
            return values.min(-1).values
        if self.reduce == "max":
            return values.max(-1).values
        return values.mean(-1)

    @torch.no_grad()
    def select(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        """One action ``[*B, A]`` per observation ``[*B, S]`` (see the class docstring for the rule)."""
        with precision_context(self.precision, observation.device):
            candidates = self.actor.sample(
                observation, num_samples=self.num_candidates, deterministic=deterministic, **self._sampling
            )
        score = self.scores(observation, candidates)
        if deterministic or self.selection == "argmax":
            index = score.argmax(-1)
        else:
            probs = torch.softmax(score / self.temperature, dim=-1)
            index = torch.multinomial(probs.reshape(-1, self.num_candidates), 1).reshape(score.shape[:-1])
        gather_index = index[..., None, None].expand(*index.shape, 1, candidates.shape[-1])
        return candidates.gather(-2, gather_index).squeeze(-2)

    def is_deterministic_mode(self) -> bool:
        """Whether ``forward`` selects deterministically under the current exploration context."""
        return deterministic_mode(self.default_interaction_type)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation = tensordict.get(self.in_keys[0])
        tensordict.set(self.out_keys[0], self.select(observation, deterministic=self.is_deterministic_mode()))
        return tensordict
