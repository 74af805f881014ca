"""One gradient update, ``update(batch) -> metrics``, in the two orders the algorithms here use.

* :func:`summed_loss_update`: one backward of the summed ``loss_*`` entries, then every optimizer (Cal-QL, IQL, CQL,
  SAC: TorchRL's losses route each term only to the parameters it trains, so one backward is correct);
* :func:`critic_then_actor_update`: the critic steps first, then the actor's loss is computed against the critic just
  updated (Diffusion-QL and Q-Score Matching, as their official code does).

Both step optional learning-rate schedulers after the optimizers and then the target updater, and return detached
metrics for :class:`~diffrl.train.trainer.Trainer` (which stops the run on a non-finite ``loss_*`` or ``*grad_norm``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from tensordict import TensorDictBase

__all__ = ["critic_then_actor_update", "summed_loss_update"]


def summed_loss_update(
    loss: Callable[[TensorDictBase], TensorDictBase],
    optimizers: Iterable[torch.optim.Optimizer],
    updater: Any = None,
    *,
    schedulers: Iterable[Any] = (),
) -> Callable[[TensorDictBase], TensorDictBase]:
    """``update(batch) -> metrics``: one backward of the summed ``loss_*`` entries, every optimizer, the targets.

    Every optimizer zeroes its gradients, the ``loss_*`` entries of ``loss(batch)`` are summed and backpropagated once,
    every optimizer steps, every scheduler steps, then ``updater.step()`` moves the target networks. Returns the loss
    output, detached.

    Example:
        >>> from tensordict import TensorDict
        >>> weight = torch.nn.Parameter(torch.ones(1))
        >>> loss = lambda batch: TensorDict({"loss_x": (weight * batch["x"]).sum(), "mean_x": batch["x"].mean()})
        >>> update = summed_loss_update(loss, [torch.optim.SGD([weight], lr=0.5)])
        >>> out = update(TensorDict({"x": torch.ones(2)}, batch_size=[2]))
        >>> float(weight), float(out["loss_x"]), out["loss_x"].requires_grad
        (0.0, 2.0, False)
    """
    optimizers, schedulers = list(optimizers), list(schedulers)

    def update(batch: TensorDictBase) -> TensorDictBase:
        out = loss(batch)
        for optimizer in optimizers:
            optimizer.zero_grad()
        sum(value for key, value in out.items() if key.startswith("loss_")).backward()
        for optimizer in optimizers:
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        if updater is not None:
            updater.step()
        return out.detach()

    return update


def critic_then_actor_update(
    loss: Any,
    critic_optimizer: torch.optim.Optimizer,
    actor_optimizer: torch.optim.Optimizer,
    updater: Any = None,
    *,
    grad_norm: float = 0.0,
    schedulers: Iterable[Any] = (),
    compile: bool = False,
) -> Callable[[TensorDictBase], dict[str, Any]]:
    """``update(batch) -> metrics``: a critic step, then an actor step against the critic just updated.

    ``loss`` exposes ``qvalue_loss(batch) -> (loss, metrics)`` and ``actor_loss(batch) -> (loss, metrics)`` (diffrl's
    :class:`~diffrl.objectives.DiffusionQLLoss` and :class:`~diffrl.objectives.QScoreMatchingLoss`, TorchRL's
    ``TD3BCLoss``...). The critic's ``td_error`` (for prioritised replay) is dropped from the metrics.

    Args:
        loss: the loss module.
        critic_optimizer, actor_optimizer: optimizers over the critic's and the actor's parameters.
        updater: target updater (``step()`` after both optimizers), or ``None``.
        grad_norm: clip each optimizer's gradient norm to this value (0: no clipping; the norms are reported as
            ``critic_grad_norm`` and ``actor_grad_norm`` either way).
        schedulers: learning-rate schedulers stepped after the optimizers; the first one's rate is reported as
            ``actor_lr`` when it drives the actor's optimizer.
        compile: run both loss terms through ``torch.compile`` (one graph each, forward and backward; with CUDA graphs,
            ``mode="reduce-overhead"``, when the networks are on a GPU).

    Example:
        >>> from tensordict import TensorDict
        >>> class Toy:
        ...     def __init__(self):
        ...         self.q, self.pi = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))
        ...     def qvalue_loss(self, batch):
        ...         return ((self.q - batch["y"]) ** 2).mean(), {"td_error": self.q.detach()}
        ...     def actor_loss(self, batch):  # sees the critic after its step
        ...         return -(self.pi * self.q.detach()).mean(), {"q_seen": self.q.detach()}
        >>> toy = Toy()
        >>> update = critic_then_actor_update(toy, torch.optim.SGD([toy.q], lr=0.5), torch.optim.SGD([toy.pi], lr=1.0))
        >>> out = update(TensorDict({"y": torch.ones(4)}, [4]))
        >>> float(out["q_seen"]), float(toy.pi), "td_error" in out
        (1.0, 1.0, False)
    """
    critic_params = [p for group in critic_optimizer.param_groups for p in group["params"]]
    actor_params = [p for group in actor_optimizer.param_groups for p in group["params"]]
    schedulers = list(schedulers)
    qvalue_loss, actor_loss = loss.qvalue_loss, loss.actor_loss
    if compile:
        # On a GPU, CUDA graphs remove the per-kernel launch cost of these small networks (untested here: no GPU).
        mode = "reduce-overhead" if critic_params and critic_params[0].is_cuda else None
        qvalue_loss, actor_loss = torch.compile(qvalue_loss, mode=mode), torch.compile(actor_loss, mode=mode)
    actor_schedule = next((s for s in schedulers if getattr(s, "optimizer", None) is actor_optimizer), None)

    def norm(params: list[torch.Tensor]) -> torch.Tensor:
        if grad_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, grad_norm)
        grads = [p.grad for p in params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())

    def update(batch: TensorDictBase) -> dict[str, Any]:
        loss_qvalue, metrics = qvalue_loss(batch)
        critic_optimizer.zero_grad()
        loss_qvalue.backward()
        critic_grad_norm = norm(critic_params)
        critic_optimizer.step()
        loss_actor, actor_metrics = actor_loss(batch)
        actor_optimizer.zero_grad()
        loss_actor.backward()
        actor_grad_norm = norm(actor_params)
        actor_optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        if updater is not None:
            updater.step()
        metrics = dict(metrics)
        metrics.pop("td_error", None)
        out = {
            "loss_qvalue": loss_qvalue.detach(),
            "loss_actor": loss_actor.detach(),
            **metrics,
            **actor_metrics,
            "critic_grad_norm": critic_grad_norm.detach(),
            "actor_grad_norm": actor_grad_norm.detach(),
        }
        if actor_schedule is not None:
            out["actor_lr"] = actor_schedule.get_last_lr()[0]
        return out

    return update
