"""Gaussian actors for the SAC-style losses and IQL, registered as actors "tanh_normal" and "gaussian".

* ``tanh_normal``: the tanh-Gaussian of Cal-QL, CQL and SAC. A TorchRL ``ProbabilisticActor`` with a ``TanhNormal``
  distribution, built the way TorchRL's losses expect: an MLP writes ``loc`` and ``scale`` (``NormalParamExtractor``:
  softplus-mapped scale with a lower bound, or CORL's ``log_std = raw - 1`` with ``scale_mapping="corl"``), the
  distribution squashes into ``[action_low, action_high]``, and ``return_log_prob=True`` also writes the sample's
  log-probability.
* ``gaussian``: CORL's IQL actor, ``Normal(tanh(MLP(s)), exp(log_std))`` with a learned state-independent
  ``log_std`` and the log-probabilities of that Normal (no tanh correction), so dataset actions at the bounds keep a
  moderate log-probability instead of one that dominates IQL's advantage-weighted loss.

TorchRL's IQLLoss/CQLLoss/SACLoss call ``get_dist`` on either directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor, TanhNormal

from diffrl import registry
from diffrl.modules.diffusion_actor import action_bounds
from diffrl.nn.mlp import INITS, MLP, _check_dim, _check_hidden

__all__ = ["ClampedNormal", "CORLScaleExtractor", "GaussianMeanStd", "gaussian", "tanh_normal"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # CORL's clamp of log_std for both its IQL and its Cal-QL actors
SCALE_MAPPINGS = ("corl", "biased_softplus_<bias>", "softplus", "exp", "relu", "none")  # for error messages


def _check_actor_args(obs_dim: int, action_dim: int, hidden_sizes: Sequence[int], init: str) -> None:
    """One-line errors for sizes and init names before any layer is built (torch's own messages name neither)."""
    _check_dim(obs_dim, "obs_dim")
    _check_dim(action_dim, "action_dim")
    _check_hidden(hidden_sizes)
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")


def _bounds_for_distribution(low: Tensor, high: Tensor) -> tuple[float | Tensor, float | Tensor]:
    # Python-float bounds follow the module across devices; per-dimension bounds are tensors fixed at construction.
    uniform = bool((low == low[0]).all() and (high == high[0]).all())
    return (float(low[0]), float(high[0])) if uniform else (low, high)


def _bounded_actor(
    net: nn.Module,
    low: Tensor,
    high: Tensor,
    in_keys: Sequence[NestedKey],
    out_keys: Sequence[NestedKey],
    distribution_class: type,
    return_log_prob: bool,
    **distribution_kwargs,
) -> ProbabilisticActor:
    """``net: observation -> (loc, scale)`` wrapped as a ``ProbabilisticActor`` whose spec and distribution carry the
    per-dimension bounds ``[low, high]`` (``[action_dim]`` tensors)."""
    module = TensorDictModule(net, in_keys=list(in_keys), out_keys=["loc", "scale"])
    dist_low, dist_high = _bounds_for_distribution(low, high)
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=list(out_keys),
        spec=Bounded(low=low, high=high, shape=low.shape, dtype=torch.float32),
        distribution_class=distribution_class,
        distribution_kwargs={"low": dist_low, "high": dist_high, **distribution_kwargs},
        return_log_prob=return_log_prob,
    )


class CORLScaleExtractor(nn.Module):
    """``raw [..., 2A] -> (loc [..., A], scale [..., A])`` with CORL's Cal-QL mapping of the second half.

    ``log_std = clamp(multiplier * raw + offset, -20, 2)`` and ``scale = exp(log_std)``; ``multiplier`` (1) and
    ``offset`` (-1) are learned scalars, as in CORL's ``TanhGaussianPolicy``, so a raw output of 0 starts at
    std ``exp(-1) ~ 0.37`` and the std can never exceed ``exp(2)``.

    Example:
        >>> import torch
        >>> loc, scale = CORLScaleExtractor()(torch.zeros(4, 6))
        >>> loc.shape, round(float(scale[0, 0].detach()), 4)
        (torch.Size([4, 3]), 0.3679)
    """

    def __init__(self, multiplier: float = 1.0, offset: float = -1.0) -> None:
        super().__init__()
        self.multiplier = nn.Parameter(torch.tensor(float(multiplier)))
        self.offset = nn.Parameter(torch.tensor(float(offset)))

    def forward(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_log_std = raw.chunk(2, dim=-1)
        log_std = (self.multiplier * raw_log_std + self.offset).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return loc, log_std.exp()


@registry.register("actor", "tanh_normal")
def tanh_normal(
    obs_dim: int,
    action_dim: int,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    activation: str = "relu",
    action_low: float | Sequence[float] | Tensor = -1.0,
    action_high: float | Sequence[float] | Tensor = 1.0,
    scale_mapping: str = "biased_softplus_1.0",
    scale_lb: float = 1e-4,
    init: str = "default",
    tanh_loc: bool = False,
    return_log_prob: bool = False,
    in_keys: Sequence[NestedKey] = ("observation",),
    out_keys: Sequence[NestedKey] = ("action",),
) -> ProbabilisticActor:
    """A ``ProbabilisticActor`` ``observation -> loc, scale -> TanhNormal -> action`` within the bounds.

    Args:
        obs_dim, action_dim: sizes.
        hidden_sizes: MLP widths. Default ``(256, 256)``.
        activation: default ``"relu"``.
        action_low, action_high: bounds, scalars or per-dimension. Default -1 and 1.
        scale_mapping, scale_lb: ``NormalParamExtractor`` options (scale = mapping(raw), at least ``scale_lb``), or
            ``scale_mapping="corl"``: CORL's Cal-QL actor, ``log_std = raw - 1`` clamped to ``[-20, 2]``
            (``CORLScaleExtractor``; ``scale_lb`` unused). The default ``"biased_softplus_1.0"`` (TorchRL's SAC
            convention, initial std about 1, no upper bound) stays for SAC/CQL users; the Cal-QL configs turn
            ``"corl"`` on because CORL's reported Cal-QL numbers start from std about 0.37.
        init: weight init of every MLP layer (``diffrl.nn.mlp.INITS``). ``"orthogonal"`` is CORL's Cal-QL actor
            (``orthogonal_init=True``: gain sqrt 2 on every layer, the output layer included, biases 0). Default
            ``"default"`` (``nn.Linear``'s own, TorchRL's SAC); the Cal-QL configs turn ``"orthogonal"`` on.
        tanh_loc: TanhNormal's option to squash ``loc`` before sampling. Default False.
        return_log_prob: also write the log-probability of the sampled action. Default False.
        in_keys: the observation key(s). out_keys: the action key.

    Writes ``loc``, ``scale``, ``out_keys[0]`` (and its log-probability when ``return_log_prob``). Outside an
    exploration context TorchRL's default applies: DETERMINISTIC, i.e. the squashed mean.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> actor = tanh_normal(obs_dim=3, action_dim=2, action_low=-2.0, action_high=2.0, return_log_prob=True)
        >>> td = TensorDict({"observation": torch.randn(5, 3)}, batch_size=[5])
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     out = actor(td)
        >>> out["action"].shape, bool(out["action"].abs().max() <= 2)
        (torch.Size([5, 2]), True)
        >>> dist = actor.get_dist(td)
        >>> dist.log_prob(out["action"]).shape
        torch.Size([5])
    """
    _check_actor_args(obs_dim, action_dim, hidden_sizes, init)
    low, high = action_bounds(action_low, action_high, action_dim)
    if scale_mapping == "corl":
        extractor: nn.Module = CORLScaleExtractor()
    else:
        try:
            extractor = NormalParamExtractor(scale_mapping=scale_mapping, scale_lb=scale_lb)
            extractor(torch.zeros(2))  # TorchRL parses the mapping name lazily: fail here, not at the first batch
        except (ValueError, NotImplementedError, RuntimeError) as err:
            raise ValueError(f"unknown scale_mapping {scale_mapping!r}; accepted: {list(SCALE_MAPPINGS)}.") from err
    net = nn.Sequential(MLP(obs_dim, 2 * action_dim, hidden_sizes, activation=activation, init=init), extractor)
    return _bounded_actor(net, low, high, in_keys, out_keys, TanhNormal, return_log_prob, tanh_loc=tanh_loc)


_NO_SHAPE = torch.Size()


class ClampedNormal(Independent):
    """A diagonal Normal over actions whose samples are clamped to ``[low, high]``; log-probabilities are the Normal's.

    The distribution of the ``gaussian`` actor: ``log_prob`` sums over the last (action) dimension and applies no
    correction for the clamp (as CORL's IQL, which clamps only the action it sends to the env). ``mean``, ``mode`` and
    ``deterministic_sample`` are the location clamped to the bounds; ``sample``/``rsample`` are clamped draws.

    Example:
        >>> import torch
        >>> d = ClampedNormal(torch.zeros(3, 2), torch.full((3, 2), 10.0), low=-1.0, high=1.0)
        >>> bool(d.sample((100,)).abs().max() <= 1), d.log_prob(torch.zeros(3, 2)).shape
        (True, torch.Size([3]))
    """

    def __init__(self, loc: Tensor, scale: Tensor, low: float | Tensor = -1.0, high: float | Tensor = 1.0) -> None:
        super().__init__(Normal(loc, scale), 1, validate_args=False)
        self.low = low if not isinstance(low, Tensor) else low.to(loc.device)
        self.high = high if not isinstance(high, Tensor) else high.to(loc.device)

    def _clamp(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.low, self.high)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        return self._clamp(super().sample(sample_shape))

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> Tensor:
        return self._clamp(super().rsample(sample_shape))

    @property
    def deterministic_sample(self) -> Tensor:
        return self._clamp(self.base_dist.loc)

    @property
    def mode(self) -> Tensor:
        return self.deterministic_sample


class GaussianMeanStd(nn.Module):
    """``observation -> (loc, scale)`` of CORL's IQL actor, scaled to ``[low, high]``.

    ``loc = center + half_width * tanh(MLP(s))`` and ``scale = half_width * exp(clamp(log_std, -20, 2))`` with
    ``log_std`` a learned vector (initially 0) shared by all states. With bounds ``[-1, 1]`` this is exactly CORL's
    ``Normal(tanh(MLP(s)), exp(log_std))``; other bounds are the same Normal mapped affinely (log-probabilities shift by
    the constant ``-sum log half_width``, so IQL's gradients are unchanged).

    Example:
        >>> import torch
        >>> net = GaussianMeanStd(3, 2, hidden_sizes=(8,), low=torch.tensor([0.0, -2.0]), high=torch.tensor([1.0, 2.0]))
        >>> loc, scale = net(torch.randn(5, 3))
        >>> bool((loc[:, 0] > 0).all() and (loc[:, 0] < 1).all()), scale[0].tolist()
        (True, [0.5, 2.0])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        low: Tensor | None = None,
        high: Tensor | None = None,
        init: str = "default",
    ) -> None:
        super().__init__()
        low = torch.full((action_dim,), -1.0) if low is None else low
        high = torch.full((action_dim,), 1.0) if high is None else high
        self.mlp = MLP(obs_dim, action_dim, hidden_sizes, activation=activation, init=init)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_width", (high - low) / 2)

    def forward(self, observation: Tensor) -> tuple[Tensor, Tensor]:
        loc = self.center + self.half_width * torch.tanh(self.mlp(observation))
        std = self.half_width * self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        return loc, std.expand_as(loc)


@registry.register("actor", "gaussian")
def gaussian(
    obs_dim: int,
    action_dim: int,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    activation: str = "relu",
    action_low: float | Sequence[float] | Tensor = -1.0,
    action_high: float | Sequence[float] | Tensor = 1.0,
    init: str = "default",
    return_log_prob: bool = False,
    in_keys: Sequence[NestedKey] = ("observation",),
    out_keys: Sequence[NestedKey] = ("action",),
) -> ProbabilisticActor:
    """CORL's IQL actor: a ``ProbabilisticActor`` ``observation -> Normal(tanh(MLP(s)), exp(log_std))``.

    Follows CORL's ``algorithms/finetune/iql.py`` (``GaussianPolicy``): 2 x 256 ReLU MLP, tanh on the mean, a learned
    state-independent ``log_std`` (zeros at start, clamped to ``[-20, 2]``), log-probabilities of the unsquashed
    Normal. Everything is scaled affinely to ``[action_low, action_high]`` (``GaussianMeanStd``); sampled actions are
    clamped to the bounds (``ClampedNormal``), and the deterministic action is the mean ``tanh(MLP(s))``. Use it for
    IQL (the IQL configs' default); ``tanh_normal`` stays the actor of the SAC-style losses, which need the
    reparameterised, squashed samples and their log-probabilities.

    Args:
        obs_dim, action_dim: sizes (positive ints).
        hidden_sizes: MLP widths. Default ``(256, 256)`` (CORL).
        activation: default ``"relu"``.
        action_low, action_high: bounds, scalars or per-dimension. Default -1 and 1.
        init: weight init of the MLP (``diffrl.nn.mlp.INITS``). Default ``"default"``, as CORL's IQL.
        return_log_prob: also write the log-probability of the sampled action. Default False.
        in_keys: the observation key(s). out_keys: the action key.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> actor = gaussian(obs_dim=3, action_dim=2, action_low=-2.0, action_high=2.0)
        >>> td = TensorDict({"observation": torch.randn(5, 3)}, batch_size=[5])
        >>> with set_exploration_type(ExplorationType.RANDOM):
        ...     sampled = actor(td.clone())["action"]
        >>> out = actor(td.clone())  # outside an exploration context: the mean center + half * tanh(MLP(s))
        >>> bool(sampled.abs().max() <= 2), torch.equal(out["action"], out["loc"])
        (True, True)
        >>> actor.get_dist(td).log_prob(torch.full((5, 2), 2.0)).shape  # finite at the bounds: no tanh correction
        torch.Size([5])
    """
    _check_actor_args(obs_dim, action_dim, hidden_sizes, init)
    low, high = action_bounds(action_low, action_high, action_dim)
    net = GaussianMeanStd(obs_dim, action_dim, hidden_sizes, activation, low, high, init)
    return _bounded_actor(net, low, high, in_keys, out_keys, ClampedNormal, return_log_prob)
