"""`ResumableSampler`: a shuffling (optionally sharded) sampler whose order a resumed run can continue exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[int]):
    """Indices of ``data_source``, in a new order each pass, that a resumed run can take up mid-pass.

    The order of pass ``p`` is a pure function of ``(seed, p)`` (its own generator, seeded with
    ``seed + p``), so sampling never touches the global random state, and every rank of a
    distributed run draws the same permutation and takes its own share. Each ``__iter__`` (the
    data loader makes one iterator per pass) starts the next pass. `resume_at` makes the next
    pass the one a run stopped in, starting at the batch it stopped before.

    Args:
        data_source: the data set (only its length is used).
        shuffle: a new random order each pass; False: ``0, 1, ..., n - 1`` every pass.
        seed: base seed of the permutations; the same on every rank.
        num_replicas: number of ranks sharing the data (the world size), 1 without DDP.
        rank: this rank's share: indices ``rank, rank + num_replicas, ...`` of the (padded) order.
        even_divisible: pad the order by repeating its start so every rank gets ``ceil(n / num_replicas)``
            indices (as `DistributedSampler`); False: ranks may get one index fewer.
    """

    def __init__(
        self,
        data_source: Sized,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        even_divisible: bool = True,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}.")
        self.data_size = len(data_source)
        if self.data_size == 0:
            raise ValueError("data_source is empty.")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_divisible = even_divisible
        self.total_size = math.ceil(self.data_size / num_replicas) * num_replicas if even_divisible else self.data_size
        self.num_samples = len(range(rank, self.total_size, num_replicas))
        self.next_pass = 0
        self._skip = 0

    def __len__(self) -> int:
        return self.num_samples

    def order(self, pass_index: int) -> list[int]:
        """This rank's indices in pass ``pass_index``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + pass_index)
            indices = torch.randperm(self.data_size, generator=generator).tolist()
        else:
            indices = list(range(self.data_size))
        while len(indices) < self.total_size:  # pad (by repeating the start) to share evenly
            indices += indices[: self.total_size - len(indices)]
        return indices[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self.order(self.next_pass)[self._skip :]
        self.next_pass += 1
        self._skip = 0
        return iter(indices)

    def batches_per_pass(self, batch_size: int, drop_last: bool) -> int:
        """Batches a data loader makes from one pass."""
        return self.num_samples // batch_size if drop_last else math.ceil(self.num_samples / batch_size)

    def resume_at(self, batch_index: int, batch_size: int, drop_last: bool) -> None:
        """Start the next ``__iter__`` at global batch ``batch_index`` (0-based; the batches already trained on).

        A data loader iterator that lives across passes, as ignite keeps it, makes global batch ``k``
        from pass ``k // b`` at position ``k % b`` (``b`` = `batches_per_pass`).
        """
        per_pass = self.batches_per_pass(batch_size, drop_last)
        if per_pass < 1:
            raise ValueError(f"{self.num_samples} samples make no batch of {batch_size} with drop_last.")
        self.next_pass, position = divmod(int(batch_index), per_pass)
        self._skip = position * batch_size

    def settings(self) -> dict[str, int | bool]:
        """The settings that define the order (to check that a resumed run draws the same one)."""
        return {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "data_size": self.data_size,
            "num_replicas": self.num_replicas,
            "even_divisible": self.even_divisible,
        }
