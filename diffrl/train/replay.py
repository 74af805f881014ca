"""Replay for offline-to-online training: batches mixed from several buffers, and the online buffer.

:class:`BatchMixer` is what online batches of :class:`~diffrl.train.trainer.Trainer` come from: exact per-batch
proportions of each source (CORL's Cal-QL: half offline, half online), or uniform sampling over the union of the
sources (CORL's IQL keeps one buffer). Unlike TorchRL's ``OfflineToOnlineReplayBuffer`` it takes any number of named
sources (EDIS adds a synthetic one), fractions of 0 and 1, and proportions changed at run time, and it checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tensordict import TensorDictBase

__all__ = ["BatchMixer", "make_online_buffer", "StoredItems"]


class BatchMixer:
    """Draw each batch from several replay buffers: exact per-batch proportions, or uniformly over their union.

    With ``fractions`` (``{name: fraction}``, summing to 1), a batch of B holds ``floor(f * B)`` items of every source
    plus the remainder handed out by largest fractional part, so ``{"offline": 0.5, "online": 0.5}`` gives exactly
    128 + 128 of 256 every time. A source that is empty gives its share to the others. With ``fractions=None`` every
    stored transition is equally likely: the counts are a multinomial draw with probabilities proportional to the
    buffers' sizes (one buffer holding the dataset and the online data, as in CORL's IQL fine-tuning).

    Parts are concatenated on the keys they all have (e.g. the offline dataset's ``"episode"`` index is dropped when
    online data joins), then ``transform`` (if any) is applied to the whole batch.

    Args:
        sources: ``{name: buffer}``; a buffer needs ``sample(n)`` and ``len()``.
        fractions: ``{name: fraction}`` over a subset of ``sources`` (missing names get 0), or ``None``.
        batch_size: default batch size of :meth:`sample`.
        transform: callable applied to every mixed batch (e.g. a TorchRL ``Transform``).

    Example:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> def buffer(value, n):
        ...     rb = TensorDictReplayBuffer(storage=LazyTensorStorage(n))
        ...     _ = rb.extend(TensorDict({"x": torch.full((n, 1), value)}, [n]))
        ...     return rb
        >>> sources = {"offline": buffer(1.0, 50), "online": buffer(-1.0, 5)}
        >>> mixer = BatchMixer(sources, {"offline": 0.25, "online": 0.75})
        >>> batch = mixer.sample(8)
        >>> int((batch["x"] > 0).sum()), mixer.counts(8)
        (2, {'offline': 2, 'online': 6})
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        fractions: Mapping[str, float] | None = None,
        *,
        batch_size: int | None = None,
        transform: Callable[[TensorDictBase], TensorDictBase] | None = None,
    ):
        self.sources: dict[str, Any] = dict(sources)
        self.fractions: dict[str, float] | None = None
        self.set_fractions(fractions)
        self.batch_size = batch_size
        self.transform = transform

    def set_source(self, name: str, buffer: Any, fraction: float | None = None) -> None:
        """Add or replace source ``name``; with ``fraction``, its share becomes ``fraction`` and the others are
        rescaled to fill the rest in their current proportions."""
        self.sources[name] = buffer
        if fraction is None:
            return
        if self.fractions is None:
            raise ValueError(
                "this mixer samples uniformly over the union (fractions=None); call set_fractions with "
                "a fraction for every source instead"
            )
        others = {k: v for k, v in self.fractions.items() if k != name}
        total = sum(others.values())
        rest = 1.0 - float(fraction)
        scaled = {k: (v / total * rest if total > 0 else 0.0) for k, v in others.items()}
        self.set_fractions({**scaled, name: float(fraction)})

    def set_fractions(self, fractions: Mapping[str, float] | None) -> None:
        """Set the per-batch proportions (``None``: uniform over the union of all sources)."""
        if fractions is None:
            self.fractions = None
            return
        unknown = sorted(set(fractions) - set(self.sources))
        if unknown:
            raise ValueError(f"fractions name unknown sources {unknown}; sources: {sorted(self.sources)}")
        values = {name: float(f) for name, f in fractions.items()}
        if any(f < 0 for f in values.values()) or abs(sum(values.values()) - 1.0) > 1e-6:
            raise ValueError(
                f"fractions must be non-negative and sum to 1, got {values}; e.g. {{'offline': 0.5, 'online': 0.5}}"
            )
        self.fractions = values

    def counts(self, batch_size: int | None = None) -> dict[str, int]:
        """How many items of a batch of ``batch_size`` each source gives (random when ``fractions`` is None)."""
        batch_size = self._batch_size(batch_size)
        sizes = {name: len(buffer) for name, buffer in self.sources.items()}
        if sum(sizes.values()) == 0:
            raise RuntimeError(f"every source of the mixer is empty ({sorted(sizes)}); extend one before sampling")
        if self.fractions is None:
            names = [name for name, size in sizes.items() if size > 0]
            probs = torch.tensor([float(sizes[name]) for name in names], dtype=torch.float64)
            drawn = torch.multinomial(probs, batch_size, replacement=True)
            return {name: int((drawn == i).sum()) for i, name in enumerate(names)}
        shares = {name: f for name, f in self.fractions.items() if sizes[name] > 0 and f > 0}
        if not shares:  # only empty sources have weight: fall back to the non-empty ones, uniformly
            shares = {name: 1.0 for name, size in sizes.items() if size > 0}
        total = sum(shares.values())
        exact = {name: batch_size * f / total for name, f in shares.items()}
        out = {name: int(value) for name, value in exact.items()}
        by_remainder = sorted(exact, key=lambda name: exact[name] - out[name], reverse=True)
        for name in by_remainder[: batch_size - sum(out.values())]:
            out[name] += 1
        return out

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """A batch of ``batch_size`` transitions mixed from the sources (flat batch dimension)."""
        with warnings.catch_warnings():
            # A source with its own default batch size warns when asked for another; asking for a share is the point.
            warnings.filterwarnings("ignore", message="Got conflicting batch_sizes")
            parts = [self.sources[name].sample(n).reshape(-1) for name, n in self.counts(batch_size).items() if n > 0]
        if len(parts) == 1:
            batch = parts[0]
        else:
            common = set(parts[0].keys(True, True))
            for part in parts[1:]:
                common &= set(part.keys(True, True))
            batch = torch.cat([part.select(*common) for part in parts], dim=0)
        return self.transform(batch) if self.transform is not None else batch

    def state_dict(self) -> dict[str, Any]:
        """The proportions (source contents are checkpointed with the sources themselves)."""
        return {"fractions": None if self.fractions is None else dict(self.fractions)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the proportions saved by :meth:`state_dict` (the sources must already be set)."""
        self.set_fractions(state["fractions"])

    def _batch_size(self, batch_size: int | None) -> int:
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size is None or int(batch_size) < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got {batch_size!r}; pass it to sample() or to the mixer"
            )
        return int(batch_size)

    def __repr__(self) -> str:
        sizes = {name: len(buffer) for name, buffer in self.sources.items()}
        return f"BatchMixer(sizes={sizes}, fractions={self.fractions}, batch_size={self.batch_size})"


def make_online_buffer(capacity: int, device: torch.device | str = "cpu") -> Any:
    """An empty replay buffer for online transitions: ``capacity`` items on ``device``, uniform sampling.

    Example:
        >>> from tensordict import TensorDict
        >>> rb = make_online_buffer(4)
        >>> _ = rb.extend(TensorDict({"x": torch.arange(6.0)}, [6]))  # the oldest are overwritten past capacity
        >>> len(rb), sorted(rb.storage._storage["x"].tolist())
        (4, [2.0, 3.0, 4.0, 5.0])
    """
    from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

    if int(capacity) < 1:
        raise ValueError(f"online buffer capacity must be a positive integer, got {capacity!r}")
    return TensorDictReplayBuffer(storage=LazyTensorStorage(int(capacity), device=device), sampler=RandomSampler())


class StoredItems:
    """Checkpoint a replay buffer's stored items and write cursor, not its preallocated capacity.

    TorchRL's ``state_dict`` of a ``LazyTensorStorage`` holds the whole allocation (a 1M-transition buffer even when
    it holds ten), and cannot be loaded into a buffer of another capacity (a resumed run with more online steps).
    Pass ``StoredItems(rb)`` to a checkpoint instead of ``rb``.

    Example:
        >>> from tensordict import TensorDict
        >>> rb = make_online_buffer(100); _ = rb.extend(TensorDict({"x": torch.arange(3.0)}, [3]))
        >>> state = StoredItems(rb).state_dict()
        >>> bigger = make_online_buffer(1000); StoredItems(bigger).load_state_dict(state)
        >>> state["items"].shape, len(bigger), bigger.storage[0:3]["x"].tolist()
        (torch.Size([3]), 3, [0.0, 1.0, 2.0])
    """

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def state_dict(self) -> dict[str, Any]:
        n = len(self.buffer)
        return {
            "items": self.buffer.storage[0:n].clone() if n else None,
            "capacity": self.buffer.storage.max_size,
            "writer": dict(self.buffer._writer.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from diffrl.train.checkpoint import CheckpointError

        items, capacity = state["items"], self.buffer.storage.max_size
        n = 0 if items is None else int(items.shape[0])
        if n > capacity:
            raise CheckpointError(
                f"the checkpoint holds {n} online transitions but the online buffer now holds at "
                f"most {capacity}; raise online.buffer_size to at least {n}"
            )
        self.buffer.empty()
        if n:
            self.buffer.extend(items)
        writer = dict(state["writer"])
        if capacity != state["capacity"]:  # storage order is kept; the next write goes after the last item
            writer["_cursor"] = n % capacity
        self.buffer._writer.load_state_dict(writer)
