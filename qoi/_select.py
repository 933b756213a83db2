"""Selecting the tensor a QoI reads from a model output that is a tuple or a dict."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def check_selector(selector: Any, owner: str) -> Any:
    if selector is None or callable(selector) or isinstance(selector, str):
        return selector
    if isinstance(selector, int) and not isinstance(selector, bool):
        return selector
    raise TypeError(f"{owner}: output must be None, an int index, a str key or a callable (got {type(selector).__name__})")


def is_model_output(output: Any) -> bool:
    """A Hugging Face ``ModelOutput`` (recognised by its class, without importing
    transformers)."""
    return any(c.__name__ == "ModelOutput" for c in type(output).__mro__)


def select(output: Any, selector: Any, owner: Any, *, allow_structured: bool = False) -> Any:
    """``output[selector]`` (index or key) or ``selector(output)``; with no selector the
    output itself, which must be a tensor unless ``allow_structured``. A Hugging Face
    ``ModelOutput`` with ``logits`` gives its logits (their documented main output), as
    if ``output="logits"``; other tuples and dicts need a selector."""
    if selector is None and not allow_structured and is_model_output(output) and "logits" in output:
        return output["logits"]
    if selector is None:
        if not allow_structured and not isinstance(output, Tensor):
            raise TypeError(
                f"{owner!r}: the model returns a {type(output).__name__}; pass output=<index, key or callable> "
                "to the QoI to pick the tensor to explain"
            )
        return output
    if callable(selector):
        return selector(output)
    try:
        return output[selector]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{owner!r}: output={selector!r} does not select anything from a {type(output).__name__}") from None
