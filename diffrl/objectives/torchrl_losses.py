"""TorchRL's own losses, registered so recipes can mix them with diffrl's (``registry.build("loss", "iql", ...)``).

What each one expects (observation key ``"observation"``, action key ``"action"`` by default; change keys with
``loss.set_keys(...)``). A "single Q network" is one module reading ``["observation", "action"]`` and writing
``"state_action_value"`` with shape ``[..., 1]`` (e.g. ``torchrl.modules.ValueOperator``); the loss stacks it
``num_qvalue_nets`` times (independently re-initialised) and evaluates the copies with ``vmap``. TorchRL's losses do
not accept a native ensemble that writes ``[..., N]`` values; diffrl's own losses (``cal_ql``, ...) accept both.

* ``iql`` - ``torchrl.objectives.IQLLoss(actor_network, qvalue_network, value_network, ...)``. Actor: a stochastic
  ``ProbabilisticActor`` whose distribution scores dataset actions: diffrl's ``gaussian`` actor (CORL's: a Normal
  around ``tanh(MLP(s))``, no tanh correction), because a ``TanhNormal``'s log-probabilities of dataset actions near the
  bounds are large and negative and dominate the advantage-weighted loss.
  Critic: a single Q network (2 copies by default, with targets). Value: a module reading the
  observation and writing ``"state_value"`` ``[..., 1]``. CORL's fine-tuning settings: ``expectile=0.7`` (0.9 on
  AntMaze), ``temperature=3.0`` (10 on AntMaze), ``loss_function="l2"``; advantage weights are clipped at 100 inside
  the loss. Outputs ``loss_actor``, ``loss_qvalue``, ``loss_value``. Needs a target updater (``SoftUpdate``, tau 0.005).
* ``cql`` - :class:`TorchRLCQLLoss`, TorchRL's ``CQLLoss(actor_network, qvalue_network, ...)`` with outputs that sum
  to the objective (see the class). Actor: ``ProbabilisticActor`` over ``TanhNormal``; critic: a single Q network
  (2 copies, with targets). Note that TorchRL evaluates the "next actions" of the conservative term at s', CORL at s;
  for CORL's CQL use ``cal_ql`` with ``calibration=False``.
* ``sac`` - ``torchrl.objectives.SACLoss(actor_network, qvalue_network, value_network=None, ...)``. Actor:
  ``ProbabilisticActor`` over ``TanhNormal``; critic: a single Q network (2 copies, with targets); no value network
  (SAC v2). Outputs ``loss_actor``, ``loss_qvalue``, ``loss_alpha``.
* ``td3_bc`` - ``torchrl.objectives.TD3BCLoss(actor_network, qvalue_network, action_spec=..., alpha=2.5, ...)``.
  Actor: a deterministic module writing a bounded ``"action"`` (e.g. an MLP followed by ``Tanh``); critic: a single
  Q network (2 copies); ``action_spec`` (``Bounded``) sets the target-smoothing clip. Targets for both actor and
  critic. Outputs ``loss_actor``, ``loss_qvalue``.

Every loss takes ``gamma`` through ``loss.make_value_estimator(gamma=...)`` (default 0.99) and samples its actor
stochastically where the algorithm needs it. Gradient routing holds for all four: summing every ``loss_*`` entry and
calling ``backward()`` once trains each network with its own term only.

Example:
    >>> from diffrl import registry
    >>> registry.get("loss", "iql").__name__
    'IQLLoss'
"""

from __future__ import annotations

from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torch import Tensor
from torchrl.objectives import CQLLoss

from diffrl import registry

__all__ = ["TorchRLCQLLoss"]

registry.register("loss", "iql", "torchrl.objectives:IQLLoss")
registry.register("loss", "sac", "torchrl.objectives:SACLoss")
registry.register("loss", "td3_bc", "torchrl.objectives:TD3BCLoss")


@registry.register("loss", "cql")
class TorchRLCQLLoss(CQLLoss):
    """TorchRL's ``CQLLoss`` with ``loss_*`` entries that sum to the objective (registered as ``cql``).

    TorchRL's ``CQLLoss`` returns two entries that break "sum every ``loss_*`` and backward once": ``loss_actor_bc``
    (a behaviour-cloning actor objective meant for a warm-up phase, an alternative to ``loss_actor``) and, with
    ``with_lagrange=True``, a ``loss_alpha_prime`` whose gradient also reaches the critics (with a negative sign).
    This subclass reports the first as the detached diagnostic ``actor_bc`` (call ``actor_bc_loss(td)`` for a BC
    warm-up) and detaches the conservative gaps inside the second, so it trains ``log_alpha_prime`` only.
    Everything else - arguments, keys, defaults - is TorchRL's (``torchrl.objectives.CQLLoss``).

    Example:
        >>> import torch, torchrl.objectives
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> actor = ProbabilisticActor(TensorDictModule(torch.nn.Sequential(torch.nn.Linear(3, 4),
        ...     NormalParamExtractor()), ["observation"], ["loc", "scale"]), in_keys=["loc", "scale"],
        ...     distribution_class=TanhNormal)
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[8]), ["observation", "action"])
        >>> loss = TorchRLCQLLoss(actor, critic, target_entropy=-2.0)
        >>> updater = torchrl.objectives.SoftUpdate(loss, tau=0.005)
        >>> batch = TensorDict({"observation": torch.randn(4, 3), "action": torch.rand(4, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(4, 3), ("next", "reward"): torch.ones(4, 1),
        ...     ("next", "done"): torch.zeros(4, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(4, 1, dtype=torch.bool)}, [4])
        >>> sorted(k for k in loss(batch).keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_cql', 'loss_qvalue']
    """

    @property
    def out_keys(self) -> list[str]:
        return ["actor_bc" if key == "loss_actor_bc" else key for key in super().out_keys]

    @out_keys.setter
    def out_keys(self, values: list[str]) -> None:
        self._out_keys = values

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = super().forward(tensordict)
        out.set("actor_bc", out.pop("loss_actor_bc").detach())
        return out

    def alpha_prime_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """TorchRL's alpha' loss on detached conservative gaps: only ``log_alpha_prime`` is trained by it."""
        detached = tensordict.copy()
        for key in (self.tensor_keys.cql_q1_loss, self.tensor_keys.cql_q2_loss):
            value = tensordict.get(key, None)
            if value is not None:
                detached.set(key, value.detach())
        return super().alpha_prime_loss(detached)
