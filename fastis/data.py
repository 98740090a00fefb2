"""Carrying each example's index and importance weight from the sampler to the loss.

A fastis sampler is a DataLoader `batch_sampler`: every step it yields a `Draw` (the indices
of one batch, the importance weight drawn with each, and the step number). The DataLoader
hands that object, unchanged, to the dataset's `__getitems__` in whichever worker process
fetches the batch, so wrapping the dataset in `Indexed` is enough for every example to come
back with the weight of the very draw that produced it, however far the loader prefetches:

    loader = DataLoader(fastis.data.Indexed(ds), batch_sampler=sampler, num_workers=4)
    for batch in loader:           # batch.data: what collating ds's examples gives
        x, y = batch.data          # batch.index: int64 [b]; batch.weight: float32 [b]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["Batch", "Draw", "Indexed", "take_rows"]


class Batch(NamedTuple):
    """One example with its bookkeeping; after DataLoader's default collation, a batch.

    Fields (collated shapes): `data`, the dataset's example(s) as collation makes them;
    `index`, int64 [b], positions in the wrapped dataset; `weight`, float32 [b], the
    importance weight to multiply each example's loss by; `step`, int64 [b], the sampler
    step that drew the batch (the same for all its examples).

    Examples:
        >>> import torch, fastis
        >>> ds = torch.utils.data.TensorDataset(torch.arange(6.0))
        >>> batch = next(iter(fastis.samplers.Uniform(6, 3, seed=0).loader(ds)))
        >>> (x,) = batch.data                   # what collating ds's examples gives
        >>> x.shape, batch.index.dtype, batch.weight.tolist()
        (torch.Size([3]), torch.int64, [1.0, 1.0, 1.0])
    """

    data: Any
    index: Any
    weight: Any
    step: Any


class Draw:
    """What a sampler yields for one step: indices, their weights and the step number.

    It is small and picklable (DataLoader sends it to a worker process), iterates as
    (index, weight, step) tuples, and `len()` is the batch size.

    Examples:
        >>> import numpy as np
        >>> from fastis.data import Draw
        >>> draw = Draw(np.array([4, 2]), np.array([0.5, 2.0], np.float32), step=7)
        >>> len(draw), list(draw)[0]
        (2, (4, np.float32(0.5), 7))
    """

    __slots__ = ("index", "step", "weight")

    def __init__(self, index: np.ndarray, weight: np.ndarray, step: int) -> None:
        self.index = index  # int64 [b]
        self.weight = weight  # float32 [b]
        self.step = step

    def __len__(self) -> int:
        return len(self.index)

    def __iter__(self) -> Iterator[tuple[int, np.float32, int]]:
        for i, w in zip(self.index.tolist(), self.weight):
            yield i, w, self.step

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Draw)
            and self.step == other.step
            and np.array_equal(self.index, other.index)
            and np.array_equal(self.weight, other.weight)
        )

    def __repr__(self) -> str:
        return f"Draw(step={self.step}, size={len(self)})"

    def __getstate__(self) -> tuple[np.ndarray, np.ndarray, int]:
        return self.index, self.weight, self.step

    def __setstate__(self, state: tuple[np.ndarray, np.ndarray, int]) -> None:
        self.index, self.weight, self.step = state


class Indexed(torch.utils.data.Dataset):
    """Wraps a map-style dataset so that each example comes back as a `Batch` record.

    `Indexed(ds)[draw]` fetches the draw's examples (through `ds.__getitems__` when `ds`
    has one, else one `ds[i]` at a time); `Indexed(ds)[i]` for a plain int gives
    `Batch(ds[i], i, 1.0, -1)`, so evaluation loaders work on the same object.

    Examples:
        >>> import numpy as np, torch
        >>> from fastis.data import Draw, Indexed
        >>> ds = Indexed(torch.utils.data.TensorDataset(torch.arange(5.0)))
        >>> [b.index for b in ds.__getitems__(Draw(np.array([4, 1]), np.ones(2, np.float32), 0))]
        [4, 1]
        >>> ds[3].step   # a plain index, as an evaluation loader asks
        -1
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                "Indexed needs a map-style dataset (with __getitem__ and __len__), got "
                f"{type(dataset).__name__}"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Any) -> Batch:
        if isinstance(item, tuple) and len(item) == 3:  # one (index, weight, step) of a Draw
            index, weight, step = item
            return Batch(self.dataset[index], index, weight, step)
        return Batch(self.dataset[item], int(item), np.float32(1.0), -1)

    def __getitems__(self, draw: Any) -> list[Batch]:
        if not isinstance(draw, Draw):
            return [self[item] for item in draw]
        indices = draw.index.tolist()
        getitems = getattr(self.dataset, "__getitems__", None)
        examples = getitems(indices) if getitems else [self.dataset[i] for i in indices]
        return [
            Batch(example, i, w, draw.step)
            for example, i, w in zip(examples, indices, draw.weight)
        ]


def take_rows(data: Any, rows: torch.Tensor) -> Any:
    """Rows `rows` (int64) of every batch-first tensor in `data` (a tensor, or tuples /
    lists / dicts of them), each indexed on its own device.

    Examples:
        >>> import torch
        >>> from fastis.data import take_rows
        >>> x, y = take_rows((torch.arange(6).view(3, 2), torch.tensor([7, 8, 9])),
        ...                  torch.tensor([2, 0]))
        >>> x.tolist(), y.tolist()
        ([[4, 5], [0, 1]], [9, 7])
    """
    if isinstance(data, torch.Tensor):
        return data[rows.to(data.device)]
    if isinstance(data, dict):
        return {key: take_rows(value, rows) for key, value in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(take_rows(value, rows) for value in data)
    raise TypeError(f"take_rows() handles tensors, tuples, lists and dicts, got "
                    f"{type(data).__name__}")
