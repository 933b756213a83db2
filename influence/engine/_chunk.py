"""A chunk of anchors: how many anchors one holds (:func:`_chunk_size`), what its
sample rows are drawn from (:class:`_Chunk`), and the helpers that build it (``δ``, a
line's two ends at an affine prefix's frontier), index its rows and outputs, and lay
it out in memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from doi._points import Points
from doi._points import apply as points_apply
from slices._affine import AffinePrefix

from ._inputs import no_grad_batched

_CHUNK_BYTES = 128 * 2**20  # memory for the per-anchor buffers of one chunk
_MAX_CHUNK = 4096  # anchors per chunk at most


def _chunk_size(batch_size: int, samples: int, input_numel: int, unit_numel: int, frontier_numel: int = 0) -> int:
    """Anchors per chunk: as many as the memory budget allows (per anchor: the input,
    float64 sums, squares and ``δ`` over the unit, and the two ends of the line and a
    float64 sum at an affine prefix's frontier), up to ``_MAX_CHUNK``, and a multiple of
    ``batch_size / gcd(batch_size, S)`` when possible, so that the chunk's ``n·S`` rows
    fill whole batches."""
    step = batch_size // math.gcd(batch_size, samples)
    per_anchor = 4 * input_numel + 8 * 3 * unit_numel + 16 * frontier_numel
    n = max(1, min(_MAX_CHUNK, _CHUNK_BYTES // per_anchor))
    return max(step, n // step * step) if step <= n else n


@dataclass
class _Chunk:
    """What the rows of one chunk of anchors are drawn from."""

    x: Points  # (n, *input) the anchors' inputs (or a mapping or tuple of such tensors)
    first_id: int  # the position of the first of them in the stream of anchors
    ids: Tensor  # (n,) the positions of all of them
    anchors: Tensor  # (n, *space) the anchors in the DoI's space (x, or h(x))
    reference: Tensor | None  # (n, *space) the DoI's reference points (baselines)
    anchor_output: Any  # the model's output at the anchors, for QoIs that need it
    delta: Tensor | None  # (n, *unit) float64 h(x) − h(b), for multiply_activation
    frontier: list[tuple[Tensor, Tensor]]  # per frontier tensor of the affine prefix: (a(x), a(b))
    anchor_ids: list[int] | None = None  # the anchors' positions when not first_id, first_id + 1, ... (a round of an adaptive DoI)

    @property
    def n(self) -> int:
        return self.ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ids.device


_ROW_TABLES: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}


def _row_table(rows: int, samples: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(r // S, r % S)`` for rows ``r`` of a chunk, at least ``rows`` long: made once
    per ``S`` and device and shared by queries (read only), grown to a power of two."""
    key = (samples, device)
    table = _ROW_TABLES.get(key)
    if table is None or table[0].shape[0] < rows:
        r = torch.arange(1 << max(rows - 1, 1).bit_length(), device=device)
        table = _ROW_TABLES[key] = (r // samples, r % samples)
    return table


def _line_ends(prefix: AffinePrefix, anchors: Tensor, reference: Tensor | None, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Both ends of each anchor's line at an affine prefix's frontier: ``a(x)`` and
    ``a(b)`` (one row, broadcast, when all anchors share the baseline)."""
    assert reference is not None
    ends = no_grad_batched(prefix.frontier, anchors, batch_size)
    if reference.stride(0) == 0:
        starts = [t.expand(anchors.shape[0], *t.shape[1:]) for t in prefix.frontier(reference[:1].contiguous())]
    else:
        starts = list(no_grad_batched(prefix.frontier, reference, batch_size))
    return list(zip(ends, starts))


def _delta(h: Any, batch_size: int, x: Tensor, anchors: Tensor, reference: Tensor | None, space_is_slice: bool) -> Tensor:
    """``h(x) − h(b)`` per anchor (``h(x)`` when the DoI has no reference), float64."""
    if space_is_slice:
        delta = anchors if reference is None else anchors - reference
    else:
        hx = no_grad_batched(h, x, batch_size)
        if reference is not None and reference.stride(0) == 0:  # one baseline for all anchors
            reference = reference[:1].contiguous()
        delta = hx if reference is None else hx - no_grad_batched(h, reference, batch_size)
    return delta.double()


def _index_output(output: Any, index: Tensor) -> Any:
    if isinstance(output, Tensor):
        return output[index]
    if isinstance(output, (tuple, list)):
        return type(output)(_index_output(o, index) for o in output)
    if isinstance(output, dict):
        return {k: _index_output(v, index) for k, v in output.items()}
    return output


def _in_layout(t: Points, channels_last: bool | str) -> Points:
    """``t`` channels-last when asked for and 4-D (detached: a fresh sample)."""
    if not isinstance(t, Tensor):
        return points_apply(t, Tensor.detach)
    if channels_last and t.ndim == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.detach()


def _set_layout(chunk: _Chunk, layout: torch.memory_format) -> None:
    """Put the chunk's 4-D anchors, references and frontier ends in ``layout`` (broadcast
    references stay views)."""

    def put(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        return t.contiguous(memory_format=layout) if t.ndim == 4 and t.stride(0) != 0 else t

    chunk.anchors = put(chunk.anchors)
    if chunk.reference is not None:
        chunk.reference = put(chunk.reference)
    chunk.frontier = [(put(a), put(b)) for a, b in chunk.frontier]
