"""Population DoIs: uniform over the points of a data set, or of one class of it, each
point expanded by a pointwise DoI ``each``:

``χ = (1/N) Σ_i Σ_k w_{ik} ∇(q∘g)(x_{ik})`` over the ``N`` members ``x_i``.

``ClassDoI(data, 3, each=LineDoI())`` is class-wide integrated gradients;
``DatasetDoI(data, each=LineDoI(baseline=random_rows))`` is expected gradients.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

from ._base import PointwiseDoI, PopulationDoI
from ._data import as_label_tensor, batches, check_data, data_size, labels_of, rows_of
from ._points import Points, count, rows, tensors
from ._point import PointDoI


def _check_each(each: Any, owner: str) -> PointwiseDoI:
    if each is None:
        return PointDoI()
    if not isinstance(each, PointwiseDoI):
        raise TypeError(
            f"{owner}: each must be a pointwise DoI (PointDoI, LineDoI or NoiseDoI) or None (got {type(each).__name__})"
        )
    return each


class DatasetDoI(PopulationDoI):
    """Uniform over every point of ``data`` (see :mod:`doi._data` for accepted forms),
    each expanded by ``each`` (default: the point itself)."""

    def __init__(self, data: Any, each: PointwiseDoI | None = None) -> None:
        check_data(data, "DatasetDoI")
        self.data = data
        self.each = _check_each(each, "DatasetDoI")

    def anchors(self, batch_size: int) -> Iterator[Points]:
        found = 0
        for x, _ in batches(self.data, batch_size, "DatasetDoI"):
            found += count(x)
            yield x
        if not found:
            raise ValueError("DatasetDoI: data is empty")

    def size_hint(self) -> int | None:
        return data_size(self.data)

    def take(self, start: int, stop: int) -> Points | None:
        return rows_of(self.data, slice(start, stop))

    def __repr__(self) -> str:
        return f"DatasetDoI(data={type(self.data).__name__}, each={self.each!r})"


class ClassDoI(PopulationDoI):
    """Uniform over the points of ``data`` whose label is ``label``, each expanded by
    ``each``. ``data`` must carry labels: ``(x, y)`` or a Dataset/DataLoader of pairs."""

    def __init__(self, data: Any, label: int, each: PointwiseDoI | None = None) -> None:
        check_data(data, "ClassDoI")
        if isinstance(data, Tensor):
            raise ValueError("ClassDoI: data has no labels; give (x, y) or a Dataset of (x, y) pairs")
        if isinstance(label, bool) or not isinstance(label, int):
            raise TypeError(f"ClassDoI: label must be an int class index (got {type(label).__name__} {label!r})")
        y = labels_of(data)
        if y is not None:
            y = as_label_tensor(y, "ClassDoI")
            if not bool((y == label).any()):
                present = sorted(int(v) for v in torch.unique(y)[:20])
                raise ValueError(f"ClassDoI: label {label} does not occur in the data (labels present: {present})")
        self.data, self.label = data, label
        self.each = _check_each(each, "ClassDoI")
        self._members: Tensor | None = None  # see take

    def anchors(self, batch_size: int) -> Iterator[Points]:
        found = 0
        for x, y in batches(self.data, batch_size, "ClassDoI"):
            # the members' positions found on the host (labels usually are), so that
            # points on a GPU are selected without waiting for it
            labels = as_label_tensor(y, "ClassDoI")
            members = ((labels if labels.device.type == "cpu" else labels.cpu()) == self.label).nonzero().squeeze(1)
            found += members.shape[0]
            yield rows(x, members.to(tensors(x)[0].device, non_blocking=True))
        if not found:
            raise ValueError(f"ClassDoI: label {self.label} does not occur in the data")

    def size_hint(self) -> int | None:
        y = labels_of(self.data)
        return None if y is None else int((y == self.label).sum())

    def take(self, start: int, stop: int) -> Points | None:
        y = labels_of(self.data)
        if y is None:
            return None
        if self._members is None:  # the positions of the class's points, found once
            self._members = (torch.as_tensor(y) == self.label).nonzero().squeeze(1).to(tensors(self.data[0])[0].device)
        return rows_of(self.data, self._members[start:stop])

    def __repr__(self) -> str:
        return f"ClassDoI(data={type(self.data).__name__}, label={self.label}, each={self.each!r})"
