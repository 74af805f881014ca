"""Critic builders: a Q ensemble (``twin_q``), a single Q network (``q``) and a state-value network (``value``).

Two conventions coexist and each builder serves one of them:

* diffrl's losses (Diffusion-QL, QSM) take the **ensemble** as one module: ``twin_q`` evaluates its ``num_nets``
  critics in one batched call (stacked weights) and writes ``"state_action_value"`` with the members on the **last**
  dimension, ``[*B, num_nets]``. The members cannot go first (TorchRL's ``[N, *B, 1]`` layout) because a module writes
  into the caller's tensordict, whose batch dims lead. Reduce with ``.min(-1, keepdim=True)``.
* TorchRL's own losses (IQLLoss, CQLLoss, SACLoss, TD3BCLoss, ...) take a **single** Q network writing ``[*B, 1]``
  and make ``num_qvalue_nets`` copies themselves (expanded, re-initialised parameters evaluated with ``vmap``). Give
  them ``q`` (or, equivalently, ``twin_q`` with ``num_nets=1``), never a multi-member ``twin_q``: they would vmap
  over an ensemble and get ``[num_qvalue_nets, *B, num_nets]``.

Inputs are ``cat[observation, action]`` (Diffusion-QL's order); observation and action batch dims broadcast, so an
observation ``[*B, 1, S]`` scores candidate actions ``[*B, N, A]``. The wrapped network (``critic.module``) carries
``num_nets``, which is how losses tell a native ensemble (``num_nets > 1``) from a single Q network.

Every builder takes ``init`` (``"default"``, ``"orthogonal"``, ``"xavier_uniform"``; ``diffrl.nn.mlp.INITS`` names
the source of each). A non-default init survives only where the network's own parameters are trained: TorchRL's
losses re-draw the expanded copies of a single Q network uniformly between the original's min and max, which keeps the
scale but not the orthogonality. For CORL's orthogonal Cal-QL critics, give the loss a native ``twin_q`` ensemble
(``num_nets: 2``), which diffrl's ``CalQLLoss`` uses as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import Tensor, nn

from diffrl import registry
from diffrl.nn.ensemble import QEnsemble
from diffrl.nn.mlp import INITS, MLP, _check_dim, _check_hidden, init_linear_

__all__ = ["StateActionEnsemble", "StateActionMLP", "twin_q", "q", "value"]


def _cat(observation: Tensor, action: Tensor) -> Tensor:
    batch = torch.broadcast_shapes(observation.shape[:-1], action.shape[:-1])
    return torch.cat([observation.expand(*batch, -1), action.expand(*batch, -1)], dim=-1)


class StateActionEnsemble(nn.Module):
    """``(observation [*B, S], action [*B, A]) -> Q [*B, num_nets]``, members evaluated by one ``QEnsemble`` call.

    Example:
        >>> import torch
        >>> net = StateActionEnsemble(3, 2, num_nets=2, hidden_sizes=(16,))
        >>> net(torch.randn(5, 3), torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        num_nets: int,
        hidden_sizes: Sequence[int],
        activation: str = "mish",
        init: str = "default",
    ) -> None:
        super().__init__()
        self.num_nets = num_nets  # marks a native ensemble for diffrl's losses (diffrl.objectives.qvalue)
        self.ensemble = QEnsemble(obs_dim + action_dim, num_nets, hidden_sizes, 1, activation)
        if init != "default":
            # Stacked weights are [N, in, out]: initialise each member's [out, in] matrix as nn.Linear would hold it.
            with torch.no_grad():
                for weight, bias in zip(self.ensemble.weights, self.ensemble.biases):
                    for member in range(num_nets):
                        w = torch.empty(weight.shape[2], weight.shape[1], dtype=weight.dtype)
                        init_linear_(w, bias[member, 0], init)
                        weight[member].copy_(w.t())

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        return self.ensemble(_cat(observation, action)).squeeze(-1).movedim(0, -1)


class StateActionMLP(nn.Module):
    """``(observation [*B, S], action [*B, A]) -> Q [*B, 1]``, one MLP.

    Example:
        >>> import torch
        >>> StateActionMLP(3, 2, hidden_sizes=(16,))(torch.randn(5, 3), torch.randn(5, 2)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int],
        activation: str = "mish",
        init: str = "default",
    ) -> None:
        super().__init__()
        self.mlp = MLP(obs_dim + action_dim, 1, hidden_sizes, activation=activation, init=init)
        self.num_nets = 1

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        return self.mlp(_cat(observation, action))


def _check_critic_args(obs_dim: int, action_dim: int | None, hidden_sizes: Sequence[int], init: str) -> None:
    """One-line errors for sizes and init names before any layer is built (torch's own messages name neither)."""
    _check_dim(obs_dim, "obs_dim")
    if action_dim is not None:
        _check_dim(action_dim, "action_dim")
    _check_hidden(hidden_sizes)
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")


@registry.register("critic", "twin_q")
def twin_q(
    obs_dim: int,
    action_dim: int,
    *,
    num_nets: int = 2,
    hidden_sizes: Sequence[int] = (256, 256, 256),
    activation: str = "mish",
    init: str = "default",
    in_keys: Sequence[NestedKey] = ("observation", "action"),
    out_keys: Sequence[NestedKey] = ("state_action_value",),
) -> TensorDictModule:
    """An ensemble of ``num_nets`` independent Q networks writing ``state_action_value`` ``[*B, num_nets]``.

    Defaults follow Diffusion-QL's critics (3 x 256 Mish). With ``num_nets=1`` this returns the single network of
    ``q`` (output ``[*B, 1]``), the form TorchRL's losses expect (see the module docstring).

    Args:
        obs_dim, action_dim: input sizes.
        num_nets: ensemble size. Default 2.
        hidden_sizes: widths. Default ``(256, 256, 256)``.
        activation: default ``"mish"`` (QSM uses ``"relu"`` with ``(512, 512)``).
        init: weight init of every layer (``diffrl.nn.mlp.INITS``): ``"orthogonal"`` is CORL's Cal-QL critic
            (gain sqrt 2, biases 0), ``"xavier_uniform"`` the QSM authors' jaxrl5 critic (gain 1, biases 0).
            Default ``"default"``: ``nn.Linear``'s own, as Diffusion-QL's official critics.
        in_keys: observation and action keys. out_keys: the Q-value key.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> critic = twin_q(obs_dim=3, action_dim=1, hidden_sizes=(16,))
        >>> td = TensorDict({"observation": torch.randn(4, 3), "action": torch.randn(4, 1)}, batch_size=[4])
        >>> q = critic(td)["state_action_value"]
        >>> q.shape, q.min(-1, keepdim=True).values.shape
        (torch.Size([4, 2]), torch.Size([4, 1]))
    """
    _check_critic_args(obs_dim, action_dim, hidden_sizes, init)
    if not isinstance(num_nets, int) or num_nets < 1:
        raise ValueError(f"num_nets must be a positive int, got {num_nets!r}.")
    if num_nets == 1:
        module: nn.Module = StateActionMLP(obs_dim, action_dim, hidden_sizes, activation, init)
    else:
        module = StateActionEnsemble(obs_dim, action_dim, num_nets, hidden_sizes, activation, init)
    return TensorDictModule(module, in_keys=list(in_keys), out_keys=list(out_keys))


@registry.register("critic", "q")
def q(
    obs_dim: int,
    action_dim: int,
    *,
    num_nets: int = 1,
    hidden_sizes: Sequence[int] = (256, 256, 256),
    activation: str = "mish",
    init: str = "default",
    in_keys: Sequence[NestedKey] = ("observation", "action"),
    out_keys: Sequence[NestedKey] = ("state_action_value",),
) -> TensorDictModule:
    """A single Q network writing ``state_action_value`` ``[*B, 1]``: the ``qvalue_network`` of TorchRL's losses.

    Options as ``twin_q``; ``num_nets`` is accepted only as 1 (so a config can switch between ``q`` and ``twin_q``
    and get a clear error rather than an unexpected-keyword one). A non-default ``init`` reaches only this network,
    not the copies a TorchRL loss draws from it (see the module docstring).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> critic = q(obs_dim=3, action_dim=1, hidden_sizes=(16,), activation="relu")
        >>> td = TensorDict({"observation": torch.randn(4, 3), "action": torch.randn(4, 1)}, batch_size=[4])
        >>> critic(td)["state_action_value"].shape
        torch.Size([4, 1])
    """
    if num_nets != 1:
        raise ValueError(f"critic 'q' is one network, got num_nets={num_nets!r}; use name: twin_q for an ensemble.")
    return twin_q(
        obs_dim,
        action_dim,
        num_nets=1,
        hidden_sizes=hidden_sizes,
        activation=activation,
        init=init,
        in_keys=in_keys,
        out_keys=out_keys,
    )


@registry.register("critic", "value")
def value(
    obs_dim: int,
    action_dim: int | None = None,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    activation: str = "relu",
    init: str = "default",
    in_keys: Sequence[NestedKey] = ("observation",),
    out_keys: Sequence[NestedKey] = ("state_value",),
) -> TensorDictModule:
    """A state-value network ``V(s)`` writing ``state_value`` ``[*B, 1]`` (IQL's value function; CORL: 2 x 256 ReLU).

    ``action_dim`` is accepted (and unused) so every critic builds from the same ``obs_dim``/``action_dim`` pair.
    ``init`` as ``twin_q`` (default ``"default"``: CORL's IQL value network keeps ``nn.Linear``'s init).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> v = value(obs_dim=3, action_dim=1)
        >>> v(TensorDict({"observation": torch.randn(2, 5, 3)}, batch_size=[2, 5]))["state_value"].shape
        torch.Size([2, 5, 1])
    """
    _check_critic_args(obs_dim, action_dim, hidden_sizes, init)
    return TensorDictModule(
        MLP(obs_dim, 1, hidden_sizes, activation=activation, init=init), in_keys=list(in_keys), out_keys=list(out_keys)
    )
