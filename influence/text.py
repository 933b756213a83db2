"""Token attributions shown as text: each token coloured by its attribution.

``token_heatmaps(result, tokens, mask)`` turns a result at an embedding slice (one value
per token: :meth:`InfluenceResult.token_attributions`) into one :class:`TokenHeatmap` per
sentence. Padding (``mask == 0``) is dropped. A heatmap renders as HTML (and shows itself
in a notebook, as Captum's and inseq's visualisations do) and lists its top tokens for a
terminal. Colours are diverging and symmetric around zero, per sentence: red for positive,
blue for negative, white for exactly zero.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["TokenHeatmap", "token_heatmaps"]


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
