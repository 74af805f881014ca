"""Behaviour cloning of a diffusion policy with the epsilon-prediction loss, registered as loss "diffusion_bc".

Why not TorchRL's ``torchrl.objectives.DiffusionBCLoss``: it cannot train ``diffrl``'s ``DiffusionActor``. It reaches
into the actor's private module (``actor_network.module`` must expose ``add_noise`` and ``score_network``), rebuilds
the network input itself as ``cat[noisy_action, observation, float(t)]`` (so it only fits TorchRL's own
``DiffusionActor`` layout, not networks with time embeddings such as Diffusion-QL's or QSM's), reduces with
``mse_loss`` (ignoring TorchRL's loss masks and priority weights) and caches ``in_keys`` that go stale after
``set_keys``. This loss asks the actor for the loss instead (``actor.denoising_loss``), so the network, schedule and
time encoding stay the actor's business, and it reduces through ``_reduce_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor

from diffrl import registry
from diffrl.objectives.common import DiffrlLossBase

__all__ = ["DiffusionBCLoss"]


@registry.register("loss", "diffusion_bc")
class DiffusionBCLoss(DiffrlLossBase):
    """Diffusion behaviour cloning (Ho et al. 2020's simple loss on actions; Diffusion-QL's ``bc_loss``).

    Math, per sample ``(s, a)``:

    1. draw ``t ~ U{0..T-1}`` and ``eps ~ N(0, I)``;
    2. ``a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps``;
    3. ``l = mean_d (eps_theta(a_t, t, s) - eps)^2``; ``loss_actor = reduce(l)`` (mean by default; TorchRL loss masks
       and ``reduction`` apply).

    Args:
        actor_network: an actor with ``denoising_loss(observation, action) -> Tensor[*B]`` (``DiffusionActor``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Keys read (``set_keys``): ``observation`` (default ``"observation"``), ``action`` (default ``"action"``).
    Returns ``loss_actor``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from diffrl.modules.diffusion_actor import DiffusionActor
        >>> actor = DiffusionActor(obs_dim=4, action_dim=2, hidden_sizes=(32, 32))
        >>> loss = DiffusionBCLoss(actor)
        >>> loss.set_keys(observation="state")
        >>> batch = TensorDict({"state": torch.randn(8, 4), "action": torch.rand(8, 2) * 2 - 1}, batch_size=[8])
        >>> out = loss(batch)
        >>> out["loss_actor"].backward()
        >>> loss.in_keys, out["loss_actor"].shape
        (['state', 'action'], torch.Size([]))
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the input tensordict.

        Attributes:
            observation: the conditioning observation. Default ``"observation"``.
            action: the clean (dataset) action. Default ``"action"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    loss_terms = ("actor",)  # no critic, no value estimator

    def __init__(self, actor_network: TensorDictModuleBase, *, reduction: str | None = None) -> None:
        if not callable(getattr(actor_network, "denoising_loss", None)):
            raise TypeError(
                f"DiffusionBCLoss needs an actor with a denoising_loss(observation, action) method, got "
                f"{type(actor_network).__name__}. Build one with registry.build('actor', 'diffusion', ...)."
            )
        super().__init__()
        self.reduction = "mean" if reduction is None else reduction
        self.convert_to_functional(actor_network, "actor_network")

    def _default_in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None  # no value estimator: only the in_keys follow set_keys

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """The reduced epsilon-prediction loss on the batch's (observation, action) pairs, and no diagnostics."""
        observation = self._read(tensordict, self.tensor_keys.observation)
        action = self._read(tensordict, self.tensor_keys.action)
        with self.actor_network_params.to_module(self.actor_network):
            per_sample = self.actor_network.denoising_loss(observation, action)
        return self._reduce_loss(per_sample, tensordict=tensordict), {}
