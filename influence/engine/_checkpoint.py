"""Checkpoints of long population queries, and atomic file writes.

A checkpoint holds what a population query has accumulated after its first ``P`` points:
the float64 sums ``Σ d_i``, ``Σ d_i²`` of ``d_i = m_i − s`` with their shift ``s`` (and
over channel sums) and the counts of every QoI, ``P``, the seed, a hash of the ``P``-th
point and a few before it (checked when resuming), and a *fingerprint* of the query: the
slice, DoI and QoIs (their reprs, and the bytes of any tensor they hold, such as a
baseline), ``multiply_activation``, ``affine_prefix``, the seed, dtype and device type, a hash of the model's ``state_dict`` and of the data (its
size and first point). Resuming skips the first ``P`` points of the stream without
computing them and adds the rest in the same chunks as an uninterrupted run, so the
result is bit for bit the same.

File format: a header line ``influence-checkpoint/1``, the SHA-256 of the body, then the
body (``torch.save`` of plain containers and tensors, read back with
``weights_only=True``): any corruption is detected before anything is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import hashlib
import io
import os
from typing import Any

import torch
from torch import Tensor, nn

from doi._points import Points, rows

from ._files import atomic_write

_HEADER = b"influence-checkpoint/1\n"
TAIL_ROWS = 16  # points before the resume position whose hash is checked


def _update(h: Any, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def hash_rows(t: Points) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (of each tensor of a mapping or tuple,
    with the mapping's keys)."""
    h = hashlib.sha256()
    if isinstance(t, Tensor):
        _update(h, t)
    else:
        for key, value in (t.items() if isinstance(t, Mapping) else enumerate(t)):
            h.update(str(key).encode())
            _update(h, value)
    return h.hexdigest()


def _model_hash(model: nn.Module | None) -> str:
    if model is None:
        return "no model (Slice.from_functions)"
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, Tensor):
            _update(h, t)
    return h.hexdigest()[:16]


def _tensors_hash(obj: Any) -> str:
    """A hash of the public tensor attributes of a DoI (a baseline, say), skipping the
    population's ``data`` (fingerprinted separately)."""
    h = hashlib.sha256()
    for name, value in sorted(vars(obj).items()):
        if isinstance(value, Tensor) and not name.startswith("_") and name != "data":
            h.update(name.encode())
            _update(h, value)
    return h.hexdigest()[:16]


def fingerprint(query: Any, first: Points) -> dict[str, str]:
    """What identifies a population query (``first``: the first batch of its anchors)."""
    doi = query.doi
    return {
        "model": _model_hash(query.slice.model),
        "slice": repr(query.slice),
        "doi": f"{doi!r} [tensors {_tensors_hash(doi)}{_tensors_hash(doi.each)}]",
        "qoi": ", ".join(repr(q) for q in query.qois),
        "multiply_activation": str(query.multiply),
        "affine_prefix": str(query.affine_prefix),
        "seed": str(query.seed),
        "dtype": str(query.dtype).replace("torch.", ""),
        "device": query.device.type,
        "data": f"{query.population.size_hint()} points, first {hash_rows(rows(first, slice(0, 1)))[:16]}",
    }


class Checkpoint:
    """Where a population query's progress is kept (see the module docstring)."""

    def __init__(self, path: Any, every: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint: expected a file path (got {type(path).__name__})")
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not every >= 0:
            raise ValueError(f"checkpoint_every: expected seconds >= 0 (got {every!r})")
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ValueError(f"checkpoint: folder {folder!r} does not exist; create it or choose another path")
        if os.path.isdir(self.path):
            raise ValueError(f"checkpoint: {self.path!r} is a folder; give a file path, e.g. {os.path.join(self.path, 'query.ckpt')!r}")
        self.every = float(every)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is no checkpoint yet; a file that is
        not an intact checkpoint is a ``ValueError``."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        bad = f"checkpoint: {self.path!r} is not an intact influence checkpoint"
        fix = "; delete it to start afresh (or restore a good copy)"
        if not raw.startswith(_HEADER):
            raise ValueError(f"{bad} (unknown header){fix}")
        digest, _, body = raw[len(_HEADER) :].partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != digest:
            raise ValueError(f"{bad} (its checksum does not match: the file is corrupted or truncated){fix}")
        try:
            state = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
        except Exception as e:  # an intact body that torch cannot read: another version
            raise ValueError(f"{bad} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}){fix}") from None
        needed = {"fingerprint": dict, "seed": int, "position": int, "tail": list, "sinks": list}
        if not isinstance(state, dict) or any(not isinstance(state.get(k), t) for k, t in needed.items()):
            raise ValueError(f"{bad} (fields missing){fix}")
        return state

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        body = buffer.getvalue()
        atomic_write(self.path, _HEADER + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)

    def check(self, state: dict[str, Any], now: dict[str, str]) -> None:
        """Refuse a checkpoint written by another query."""
        saved = state["fingerprint"]
        for key in now:
            if saved.get(key) != now[key]:
                raise ValueError(
                    f"checkpoint: {self.path!r} was written by a different query: its {key} differs "
                    f"(checkpoint: {saved.get(key)!r}; this query: {now[key]!r}). "
                    "Delete the file to start afresh, or give this query another checkpoint path"
                )
