"""QoIs on a causal language model: what made the model say a token, or a continuation.

A causal LM maps token ids ``(B, L)`` to logits ``(B, L, V)``: row ``i`` predicts the
token after position ``i``. The logits are the output itself, or its ``logits`` field (a
Hugging Face ``ModelOutput``); ``output=`` picks another.

* :class:`NextTokenQoI` — the logit (or log-probability) of one token at one position.
* :class:`ContinuationQoI` — the log-probability of a whole continuation ``y_1 … y_T`` that
  the input ends with (teacher forcing): ``Σ_t log p(y_t | x, y_<t)``, so that "which
  prompt tokens made the model say this" is one query.
  :meth:`ContinuationQoI.per_token` gives one QoI per generated token; as a list they share
  one forward pass (one forward and ``T`` backward passes per sample, where a step-by-step
  loop runs ``T`` forwards): the attribution matrix of prompt and earlier target tokens ×
  generated tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ._base import QoIContext, QuantityOfInterest
from ._select import check_selector, select


def _logits(output: Any, selector: Any, owner: Any) -> Tensor:
    """``(B, L, V)`` logits from the model's output."""
    if selector is not None:
        logits = select(output, selector, owner)
    elif isinstance(output, Tensor):
        logits = output
    else:
        logits = output.get("logits") if hasattr(output, "get") else getattr(output, "logits", None)
        if logits is None:
            raise ValueError(f"{owner!r}: the model's output ({type(output).__name__}) has no logits; pick them with output=")
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{owner!r}: needs a language model's logits of shape (batch, length, vocabulary) (got {shape})")
    return logits


def _check_token(value: Any, name: str, owner: str) -> int:
    if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{owner}: {name} must be a token id, an int >= 0 (got {value!r})")
    return value


class NextTokenQoI(QuantityOfInterest):
    """The logit of ``token`` predicted at ``position`` (the prediction made after reading
    the tokens up to and including ``position``; ``-1``: the next token after the input),
    or its log-probability with ``log_prob=True`` (which also weighs every other token's
    logit: ``z_token − logsumexp(z)``)."""

    def __init__(self, token: int, position: int = -1, *, log_prob: bool = False, output: Any = None) -> None:
        self.token = _check_token(token, "token", "NextTokenQoI")
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"NextTokenQoI: position must be an int (got {position!r})")
        if not isinstance(log_prob, bool):
            raise TypeError(f"NextTokenQoI: log_prob must be a bool (got {log_prob!r})")
        self.position, self.log_prob = position, log_prob
        self.output = check_selector(output, "NextTokenQoI")

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        logits = _logits(output, self.output, self)
        length, vocabulary = logits.shape[1], logits.shape[2]
        if not -length <= self.position < length:
            raise ValueError(f"{self!r}: position {self.position} is outside a sequence of {length} tokens")
        if self.token >= vocabulary:
            raise ValueError(f"{self!r}: token {self.token} is outside a vocabulary of {vocabulary}")
        row = logits[:, self.position]
        return (torch.log_softmax(row, -1) if self.log_prob else row)[:, self.token]

    def __repr__(self) -> str:
        return f"NextTokenQoI({self.token}, position={self.position}{', log_prob=True' if self.log_prob else ''})"


class ContinuationQoI(QuantityOfInterest):
    """``log p(y | x) = Σ_t log p(y_t | x, y_<t)`` for a continuation ``target`` of ``T``
    token ids that the input sequence ends with (teacher forcing: the input is the prompt
    followed by the continuation). ``steps`` restricts the sum to some of the ``T``
    tokens (:meth:`per_token` makes one QoI per token)."""

    def __init__(self, target: Sequence[int] | Tensor, *, steps: Sequence[int] | None = None, output: Any = None) -> None:
        ids = torch.as_tensor(target) if not isinstance(target, Tensor) else target.detach().cpu()
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.ndim != 1 or ids.numel() == 0 or bool((ids < 0).any()):
            raise TypeError(f"ContinuationQoI: target must be a non-empty 1-D sequence of token ids (got {target!r})")
        self.target = ids.long()
        count = self.target.shape[0]
        chosen = list(range(count)) if steps is None else list(steps)
        if not chosen or any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < count for t in chosen):
            raise ValueError(f"ContinuationQoI: steps must be positions 0..{count - 1} of the target (got {steps!r})")
        self.steps = tuple(chosen)
        self.output = check_selector(output, "ContinuationQoI")

    def per_token(self) -> list["ContinuationQoI"]:
        """One QoI per token of the continuation, ``log p(y_t | x, y_<t)``; pass the list as
        one query to share the forward pass."""
        return [ContinuationQoI(self.target, steps=[t], output=self.output) for t in self.steps]

    def _evaluate(self, output: Any, context: QoIContext) -> Tensor:
        logits = _logits(output, self.output, self)
        length, count = logits.shape[1], self.target.shape[0]
        if count >= length:
            raise ValueError(f"{self!r}: a continuation of {count} tokens needs a longer input than {length} tokens (the prompt, then the continuation)")
        if int(self.target.max()) >= logits.shape[2]:
            raise ValueError(f"{self!r}: target token {int(self.target.max())} is outside a vocabulary of {logits.shape[2]}")
        steps = torch.tensor(self.steps, device=logits.device)
        rows = length - count - 1 + steps  # the position whose logits predict each target token
        log_probs = torch.log_softmax(logits[:, rows], -1)  # (B, len(steps), V)
        tokens = self.target.to(logits.device)[steps]
        return log_probs.gather(2, tokens.expand(log_probs.shape[0], -1).unsqueeze(2)).squeeze(2).sum(1)

    def __repr__(self) -> str:
        which = "" if len(self.steps) == self.target.shape[0] else f", steps={list(self.steps)}"
        return f"ContinuationQoI({self.target.tolist()}{which})"
