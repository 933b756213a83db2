"""Text models: token heatmaps, and the workflows on token data.

``token_heatmaps(result, tokens, mask)`` turns a result at an embedding slice (one value
per token: :meth:`InfluenceResult.token_attributions`) into one :class:`TokenHeatmap` per
sentence. Padding (``mask == 0``) is dropped. A heatmap renders as HTML (and shows itself
in a notebook, as Captum's and inseq's visualisations do) and lists its top tokens for a
terminal. Colours are diverging and symmetric around zero, per sentence: red for positive,
blue for negative, white for exactly zero.

The attributions of the workflows are integrated gradients at the word embeddings
``E`` (a slice-space line, times the activation): for a sentence with ids ``t`` and the
baseline ids ``t⁰`` (``baseline`` at every position, except padding and the ``keep``
ids, e.g. ``[CLS]``/``[SEP]``), token ``l`` gets

    A_l = Σ_d (E(t)_{l,d} − E(t⁰)_{l,d}) ∫₀¹ ∂q/∂z_{l,d}(E(t⁰) + α(E(t) − E(t⁰))) dα

and by completeness ``Σ_l A_l = q(t) − q(t⁰)`` (padding positions, equal in both, get 0).

* :func:`token_audit` — the text analogue of :func:`influence.audit`: per class, the
  share of the attribution on given tokens (e.g. a suspected cue word), with standard
  errors, against the tokens' share of the sentence; a class is flagged above
  ``factor ×``.
* :func:`explain_token_neurons` — what a neuron of a transformer layer responds to: the
  sentences and positions where it is most active, each with the token heatmap of that
  unit's integrated gradients. With :func:`influence.top_neurons` (``by="feature"``) it is
  the first workflow on text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from doi._base import check_positive_int
from doi._points import Points, rows
from qoi import ClassQoI, NeuronQoI, as_qoi
from slices import Slice

from ..engine import count_missed, internal_influence, no_grad_batched, tol_counted
from ..engine import frozen
from ._labelled import check_choice, class_list, labelled_points
from ._rankings import workflow_line
from .audit import AuditResult, audit_row
from ..engine import InfluenceResult

__all__ = ["TokenHeatmap", "token_heatmaps", "token_audit", "TokenNeuronView", "explain_token_neurons", "baseline_ids"]

TokenRegion = Union[int, Sequence[int], Tensor, np.ndarray, Callable[[Tensor], Any]]


def _colour(value: float, limit: float) -> str:
    """``rgb(...)``: white at 0, full red at ``+limit``, full blue at ``-limit``."""
    t = 0.0 if limit == 0 else max(-1.0, min(1.0, value / limit))
    fade = round(255 * (1 - abs(t)))
    return f"rgb(255, {fade}, {fade})" if t > 0 else f"rgb({fade}, {fade}, 255)" if t < 0 else "rgb(255, 255, 255)"


@dataclass(frozen=True)
class TokenHeatmap:
    """One sentence's tokens and their attributions (padding already dropped)."""

    tokens: tuple[str, ...]
    values: tuple[float, ...]

    def html(self) -> str:
        """The tokens as ``<span>``s coloured by attribution; each shows its value on hover."""
        limit = max((abs(v) for v in self.values), default=0.0)
        spans = [
            f'<span title="{v:+.3e}" style="background-color: {_colour(v, limit)}; padding: 1px 2px; margin: 1px; border-radius: 3px;">{html.escape(t)}</span>'
            for t, v in zip(self.tokens, self.values)
        ]
        return '<div style="line-height: 1.9; font-family: monospace;">' + " ".join(spans) + "</div>"

    def _repr_html_(self) -> str:
        return self.html()

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` tokens of largest ``|attribution|``: ``(position, token, value)``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TokenHeatmap.top: k must be a positive int (got {k!r})")
        order = sorted(range(len(self.values)), key=lambda i: -abs(self.values[i]))[:k]
        return [(i, self.tokens[i], self.values[i]) for i in order]


def token_heatmaps(result: Any, tokens: Sequence[Sequence[str]], mask: Tensor | None = None) -> list[TokenHeatmap]:
    """One heatmap per sentence of a pointwise result at an embedding slice.

    Args:
        result: an :class:`~influence.InfluenceResult` with units ``(L, D)`` (tokens ×
            features), e.g. integrated gradients at ``bert.embeddings.word_embeddings``.
        tokens: each sentence's ``L`` token strings (``tokenizer.convert_ids_to_tokens``).
        mask: ``(N, L)``, the attention mask: positions where it is 0 (padding) are dropped.
    """
    values = result.token_attributions()
    if result.pooled:
        values = values.unsqueeze(0)
    n, length = values.shape
    if len(tokens) != n or any(len(t) != length for t in tokens):
        got = [len(t) for t in tokens]
        raise ValueError(f"token_heatmaps: tokens must be {n} sentences of {length} tokens, as the result (got lengths {got})")
    keep = torch.ones(n, length, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
    if keep.shape != (n, length):
        raise ValueError(f"token_heatmaps: mask must have shape ({n}, {length}) (got {tuple(keep.shape)})")
    return [
        TokenHeatmap(tuple(str(t) for t, k in zip(tokens[i], keep[i].tolist()) if k), tuple(float(v) for v, k in zip(values[i].tolist(), keep[i].tolist()) if k))
        for i in range(n)
    ]


# --- token data -------------------------------------------------------------------------


def _ids_and_mask(x: Points, owner: str) -> tuple[Tensor, Tensor]:
    """The token ids ``(N, L)`` of inputs ``x`` (a tensor of ids, a mapping with
    ``input_ids``, or a tuple whose first tensor holds them) and where they are real
    tokens ``(N, L)`` bool (the ``attention_mask`` of a mapping; everywhere otherwise)."""
    if isinstance(x, Mapping):
        if "input_ids" not in x:
            raise ValueError(f"{owner}: data's inputs must hold the token ids under 'input_ids' (got keys {sorted(map(str, x))})")
        ids, mask = x["input_ids"], x.get("attention_mask")
    else:
        ids, mask = (x[0] if isinstance(x, tuple) else x), None
    if ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{owner}: the token ids must be integers of shape (N, L) (got {ids.dtype} {tuple(ids.shape)})")
    if mask is None:
        return ids, torch.ones_like(ids, dtype=torch.bool)
    if mask.shape != ids.shape:
        raise ValueError(f"{owner}: inputs['attention_mask'] must have the shape of input_ids {tuple(ids.shape)} (got {tuple(mask.shape)})")
    return ids, mask.bool()


def baseline_ids(inputs: Points, baseline: int = 0, keep: Sequence[int] = ()) -> Points:
    """``inputs`` with every token id replaced by ``baseline`` (a pad or mask token),
    except padding (``attention_mask == 0``) and the ids in ``keep`` (e.g. ``[CLS]``,
    ``[SEP]``); the other tensors (masks, token types) unchanged. ``Slice.baseline`` of
    it is the slice-space baseline at the word embeddings."""
    owner = "baseline_ids"
    if isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 0:
        raise ValueError(f"{owner}: baseline must be a token id, an int >= 0 (got {baseline!r})")
    ids, real = _ids_and_mask(inputs, owner)
    stay = ~real | torch.isin(ids, torch.as_tensor(list(keep), dtype=ids.dtype, device=ids.device))
    new = torch.where(stay, ids, torch.full_like(ids, baseline))
    if isinstance(inputs, Mapping):
        return {**inputs, "input_ids": new}
    return (new, *inputs[1:]) if isinstance(inputs, tuple) else new


def _token_region(region: TokenRegion, ids: Tensor, owner: str) -> Tensor:
    """The region as a bool mask ``(N, L)``: the positions holding the token ids
    ``region``, a given bool mask, or a callable's mask of the ids."""
    if isinstance(region, (int, np.integer)) and not isinstance(region, bool):
        region = [int(region)]
    if isinstance(region, (list, tuple)):
        if not region or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in region):
            raise TypeError(f"{owner}: tokens must be token ids (an int or a list of ints), a bool mask (N, L) or a callable ids -> mask (got {region!r})")
        return torch.isin(ids, torch.as_tensor([int(t) for t in region], dtype=ids.dtype))
    value = region(ids) if callable(region) and not isinstance(region, (Tensor, np.ndarray)) else region
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor) or value.dtype != torch.bool or value.shape != ids.shape:
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{owner}: tokens as a mask must be bool of the ids' shape {tuple(ids.shape)} (got {got})")
    return value.cpu()


def _embedding_line(model: nn.Module, embedding: str, x: Points, baseline: int, keep: Sequence[int], steps: int | None, owner: str) -> tuple[Slice, Tensor]:
    """The slice at the word embeddings and every point's slice-space baseline."""
    if not isinstance(embedding, str) or not embedding:
        raise TypeError(f"{owner}: embedding must be the name of the word-embedding layer, e.g. 'bert.embeddings.word_embeddings' (got {embedding!r})")
    if steps is not None:
        check_positive_int(steps, "steps", owner)
    slc = Slice(model, embedding)
    return slc, slc.baseline(baseline_ids(x, baseline, keep))


# --- the spurious-token audit -------------------------------------------------------------


def token_audit(
    model: nn.Module,
    data: Any,
    tokens: TokenRegion,
    *,
    embedding: str,
    baseline: int = 0,
    keep: Sequence[int] = (),
    factor: float = 3.0,
    classes: int | Sequence[int] | None = None,
    steps: int | None = None,
    tol: float = 1e-2,
    qoi: Callable[[int], Any] | None = None,
    flag_on: Literal["positive", "absolute"] = "positive",
    batch_size: int = 64,
    seed: int = 0,
) -> AuditResult:
    """For each class, the share of its sentences' token attribution that falls on
    ``tokens``, against those tokens' share of the (unpadded) sentence.

    The shares are :func:`influence.audit`'s, per sentence ``i`` with token attributions
    ``A_i`` (integrated gradients at ``embedding`` of ``qoi(c)``, default ``ClassQoI(c)``)
    and region ``R_i``: ``s⁺_i = Σ_{l∈R_i} max(A_il, 0) / Σ_l max(A_il, 0)``, the same
    with ``|A_il|``, and ``r_i = |R_i| / (real tokens)``; per class their means with
    standard errors ``sd / √n``. A class is flagged when its mean share exceeds
    ``factor ×`` its mean token share.

    Args:
        model: a text classifier taking ``model(**inputs)`` (or token ids).
        data: ``(inputs, labels)``: ``inputs`` a tokenizer's mapping (``input_ids``,
            ``attention_mask``, ...), a tuple of tensors (ids first) or token ids.
        tokens: the audited tokens: token ids (an int or a list), a bool mask ``(N, L)``
            or a callable ``ids -> (N, L)`` bool mask.
        embedding: the word-embedding layer, e.g. ``"bert.embeddings.word_embeddings"``.
        baseline, keep: the baseline ids (:func:`baseline_ids`): ``baseline`` (a pad
            token) everywhere but padding and the ids in ``keep``.
        steps, tol: the line: per sentence the steps that meet ``tol`` (its relative
            completeness gap, ``LineDoI(tol=...)``), or ``steps`` Gauss–Legendre nodes.

    Returns:
        :class:`~influence.audit.AuditResult` with ``maps`` the token attributions
        ``(N, L)`` and ``masks`` the region (``area == "tokens"``).
    """
    owner = "token_audit"
    x, y = labelled_points(data, owner)
    ids, real = _ids_and_mask(x, owner)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"{owner}: factor must be a number > 0 (got {factor!r})")
    check_choice(flag_on, "flag_on", owner, ("positive", "absolute"))
    labels = class_list(classes, y, "classes", owner)
    region = _token_region(tokens, ids.cpu(), owner) & real.cpu()
    slc, base = _embedding_line(model, embedding, x, baseline, keep, steps, owner)
    found: dict[str, list[Tensor]] = {k: [] for k in ("maps", "masks", "labels", "positive", "absolute", "index")}
    table, gaps, results = [], [], []
    with tol_counted(owner, "sentences") as counts:
        for c in labels:
            where = torch.nonzero(y == c).flatten()
            q = as_qoi(qoi(c) if qoi is not None else ClassQoI(c))
            line = workflow_line(base[where.to(base.device)], steps, tol)
            result = internal_influence(slc, q, line, rows(x, where.to(ids.device)), multiply_activation=True, batch_size=batch_size, seed=seed)
            assert isinstance(result, InfluenceResult)
            count_missed(counts, result)
            results.append((c, where, result))
    for c, where, result in results:
        if result.completeness is not None:
            gaps.append(result.completeness.cpu())
        a = result.token_attributions()
        row, s_pos, s_abs = audit_row(c, a, region[where], real[where].cpu(), factor, flag_on)
        table.append(row)
        for key, value in zip(found, (a, region[where], y[where], s_pos, s_abs, where)):
            found[key].append(value.cpu())
    shown = [tokens] if isinstance(tokens, int) else list(tokens) if isinstance(tokens, (list, tuple)) else "mask" if isinstance(tokens, (Tensor, np.ndarray)) else getattr(tokens, "__name__", "callable")
    return AuditResult(
        rows=tuple(table),
        factor=float(factor),
        flag_on=flag_on,
        region=f"tokens {shown}",
        attribution=f"integrated gradients at {embedding} (baseline token {baseline}, {f'{steps} steps' if steps is not None else f'tol {tol:g}'})",
        **{k: torch.cat(v) for k, v in found.items()},
        area="tokens",
        completeness=torch.cat(gaps) if gaps else None,
        tol=None if steps is not None else tol,
    )


# --- what a neuron responds to ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TokenNeuronView:
    """One neuron of a transformer layer (``unit``: a feature, or ``(position,
    feature)``) on its most active sentences ``examples`` (rows of the data), each at
    the position ``positions`` where it fired (``activations``): the integrated
    gradients of that unit at the word embeddings, ``values (m, L)`` per token, and
    ``mask (m, L)`` the real (unpadded) tokens."""

    layer: str
    unit: int | tuple[int, int]
    examples: Tensor
    positions: Tensor
    activations: Tensor
    values: Tensor
    mask: Tensor

    @property
    def name(self) -> str:
        return f"{self.layer}[{self.unit}]"

    def heatmaps(self, tokens: Sequence[Sequence[str]]) -> list[TokenHeatmap]:
        """The examples' token heatmaps, padding dropped; ``tokens`` are the token
        strings of every row of the data (the view picks its examples' rows)."""
        if len(tokens) <= int(self.examples.max()):
            raise ValueError(f"TokenNeuronView.heatmaps: tokens must give every row of the data (got {len(tokens)} rows, need > {int(self.examples.max())})")
        out = []
        for i, row in enumerate(self.examples.tolist()):
            words = tokens[row]
            if len(words) != self.values.shape[1]:
                raise ValueError(f"TokenNeuronView.heatmaps: row {row} has {len(words)} tokens, the data {self.values.shape[1]}")
            keep = self.mask[i].tolist()
            out.append(TokenHeatmap(tuple(str(t) for t, k in zip(words, keep) if k), tuple(float(v) for v, k in zip(self.values[i].tolist(), keep) if k)))
        return out


def explain_token_neurons(
    model: nn.Module,
    layer: str,
    units: Sequence[int | tuple[int, int]],
    data: Any,
    *,
    embedding: str,
    baseline: int = 0,
    keep: Sequence[int] = (),
    over: int | Sequence[int] | None = None,
    examples: int = 3,
    steps: int | None = None,
    tol: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[TokenNeuronView, ...]:
    """What neurons of a transformer layer (outputs ``(N, L, F)``) respond to.

    For a feature ``f`` (an int, as :func:`~influence.top_neurons` with ``by="feature"``
    gives them) the ``examples`` (sentence, position) pairs of the population with the
    largest activation ``h_{l,f}``, over real tokens; for a unit ``(l, f)`` the
    sentences where it is largest. Each is explained by the integrated gradients of
    ``NeuronQoI(layer, (l, f))`` at ``embedding`` from the baseline ids (see
    :func:`token_audit`): which tokens make that unit fire there.

    Args:
        units: features (ints) or units ``(position, feature)``.
        data: ``(inputs, labels)`` as for :func:`token_audit`.
        over: the population (a class or a list of classes; default: all of ``data``).

    Returns:
        one :class:`TokenNeuronView` per unit, in order.
    """
    owner = "explain_token_neurons"
    x, y = labelled_points(data, owner)
    ids, real = _ids_and_mask(x, owner)
    examples = check_positive_int(examples, "examples", owner)
    units = [tuple(u) if isinstance(u, list) else u for u in units]
    if not units:
        raise ValueError(f"{owner}: units is empty")
    for u in units:
        if not (isinstance(u, int) and not isinstance(u, bool) and u >= 0) and not (
            isinstance(u, tuple) and len(u) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in u)
        ):
            raise TypeError(f"{owner}: each unit must be a feature (an int >= 0) or (position, feature) (got {u!r})")
    population = class_list(over, y, "over", owner)
    members = torch.nonzero(sum((y == c) for c in population).bool()).flatten()
    slc, base = _embedding_line(model, embedding, x, baseline, keep, steps, owner)
    with frozen([model]):
        act = no_grad_batched(Slice(model, layer).h, rows(x, members.to(ids.device)), batch_size)
    if not isinstance(act, Tensor) or act.ndim != 3 or act.shape[1] != ids.shape[1]:
        got = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
        raise ValueError(f"{owner}: layer {layer!r} must give one vector per token, (N, {ids.shape[1]}, features) (got {got})")
    act = act.double().cpu()
    usable = real[members].cpu()
    views = []
    for u in units:
        f = u if isinstance(u, int) else u[1]
        if f >= act.shape[2] or (isinstance(u, tuple) and u[0] >= act.shape[1]):
            raise ValueError(f"{owner}: unit {u!r} is out of range for {layer!r} of (positions, features) {tuple(act.shape[1:])}")
        score = act[:, :, f].masked_fill(~usable, -torch.inf)
        if isinstance(u, tuple):
            score = torch.full_like(score, -torch.inf).index_copy_(1, torch.tensor([u[0]]), score[:, u[0] : u[0] + 1])
        flat = score.flatten()
        order = flat.argsort(descending=True, stable=True)[: min(examples, int(torch.isfinite(flat).sum()))]
        member, position = order // act.shape[1], order % act.shape[1]
        picked = members[member]
        values = torch.zeros(len(order), ids.shape[1], dtype=torch.float64)
        with tol_counted(owner, "sentences") as counts:
            for p in position.unique().tolist():
                here = (position == p).nonzero().squeeze(1)
                where = picked[here].to(ids.device)
                line = workflow_line(base[where.to(base.device)], steps, tol)
                result = internal_influence(slc, NeuronQoI(layer, (p, f)), line, rows(x, where), multiply_activation=True, batch_size=batch_size, seed=seed)
                assert isinstance(result, InfluenceResult)
                count_missed(counts, result)
                values[here] = result.token_attributions().cpu()
        views.append(TokenNeuronView(layer, u, picked, position, flat[order], values, real[picked].cpu()))
    return tuple(views)
