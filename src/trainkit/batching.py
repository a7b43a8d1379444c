"""Batches by indexing tensors: a per-epoch seeded order, optionally resident on the GPU.

``TensorBatches`` replaces a ``DataLoader`` for datasets that are a few tensors sharing a
first dimension (GeoLife's samples are ~100k small integers each). Each batch is built by
indexing those tensors with a slice of a permutation; if the tensors live on the GPU there
are no workers, no collation in Python and no host-to-device copies per step. The order of
epoch ``k`` depends only on ``(seed, k)``, so a resumed run sees the same batches as an
uninterrupted one (a global-RNG sampler would repeat epoch 0's order after a resume).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from trainkit._validate import check_int

__all__ = ["TensorBatches", "set_loader_epoch"]


class TensorBatches:
    """Iterate over mini-batches of a dict of equally long tensors.

    Args:
        tensors: Name -> tensor, all with the same first dimension ``N``.
        batch_size: Samples per batch.
        shuffle: Shuffle each epoch with a generator seeded from ``(seed, epoch)``.
        seed: Base seed of the order.
        device: Move the tensors there once (``"cuda"`` gives the GPU-resident path).
            None keeps them where they are.
        drop_last: Drop a final short batch.
        pad_to_full_batch: Pad the final short batch to ``batch_size`` (static shapes for
            captured steps); the padding rows repeat row 0 with ``pad_values`` applied,
            e.g. ``{"y": 0}`` so padded targets are ignored by the loss and metrics.
        pad_values: Per-tensor fill values for padding rows (required keys are not checked;
            tensors not named keep row 0's values).
        transform: Called on each batch dict; its result is what iteration yields (e.g. to
            build the seed's ``(x, y, x_dict)`` tuple).

    Raises:
        ValueError: empty ``tensors``, mismatched lengths, ``batch_size < 1``, or both
            ``drop_last`` and ``pad_to_full_batch``.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
        pad_to_full_batch: bool = False,
        pad_values: Mapping[str, int | float] | None = None,
        transform: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    ) -> None:
        if not tensors:
            raise ValueError("tensors must hold at least one tensor")
        lengths = {name: int(t.shape[0]) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors must share their first dimension, got lengths {lengths}")
        check_int("batch_size", batch_size, minimum=1)
        if drop_last and pad_to_full_batch:
            raise ValueError("drop_last and pad_to_full_batch cannot both be True")
        self.tensors = {
            name: (t if device is None else t.to(device)) for name, t in tensors.items()
        }
        self.num_samples = next(iter(lengths.values()))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.pad_to_full_batch = pad_to_full_batch
        self.pad_values = dict(pad_values or {})
        self.transform = transform
        self.epoch = 0
        self.rank, self.world_size, self.even_shards = 0, 1, True

    def shard(self, rank: int, world_size: int, even: bool = True) -> None:
        """Iterate over this process's share only (data parallelism).

        Every process draws the same epoch order and takes positions ``rank::world_size``.
        ``even=True`` (training) first repeats the order's head so all shares have the same
        length, as ``DistributedSampler`` does; ``even=False`` (evaluation) counts every
        sample exactly once, so sums reduced over processes equal a single-process pass.

        Raises:
            ValueError: ``rank`` outside ``[0, world_size)``.
        """
        if not (
            isinstance(world_size, int)
            and world_size >= 1
            and isinstance(rank, int)
            and 0 <= rank < world_size
        ):
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}"
            )
        self.rank, self.world_size, self.even_shards = rank, world_size, even

    def _shard_size(self) -> int:
        if self.world_size == 1:
            return self.num_samples
        if self.even_shards:
            return -(-self.num_samples // self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    @property
    def device(self) -> torch.device:
        """Where the tensors (and so the batches) live."""
        return next(iter(self.tensors.values())).device

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (call before iterating, as with ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order of ``epoch`` (default: the current one), on the tensors' device."""
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator).to(self.device)

    def __len__(self) -> int:
        full, rest = divmod(self._shard_size(), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Any]:
        order = self.order()
        if self.world_size > 1:
            if self.even_shards:
                total = self._shard_size() * self.world_size
                order = torch.cat([order, order[: total - self.num_samples]])
            order = order[self.rank :: self.world_size]
        for start in range(0, order.shape[0], self.batch_size):
            index = order[start : start + self.batch_size]
            short = index.shape[0] < self.batch_size
            if short and self.drop_last:
                break
            batch = {name: t.index_select(0, index) for name, t in self.tensors.items()}
            if short and self.pad_to_full_batch:
                batch = self._pad(batch, self.batch_size - index.shape[0])
            yield batch if self.transform is None else self.transform(batch)

    def _pad(self, batch: dict[str, torch.Tensor], missing: int) -> dict[str, torch.Tensor]:
        padded = {}
        for name, t in batch.items():
            filler = t[:1].expand(missing, *t.shape[1:]).clone()
            if name in self.pad_values:
                filler.fill_(self.pad_values[name])
            padded[name] = torch.cat([t, filler], dim=0)
        return padded


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on ``loader``, or else on its sampler or batch sampler, if one has it.

    (``TensorBatches`` and ``DistributedSampler`` reshuffle per epoch this way.)
    """
    for target in (
        loader,
        getattr(loader, "sampler", None),
        getattr(loader, "batch_sampler", None),
    ):
        if target is not None and hasattr(target, "set_epoch"):
            target.set_epoch(epoch)
            return
