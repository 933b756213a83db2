"""A query's options: :class:`_Query` checks the arguments of :func:`internal_influence`
and holds them normalised (the batch size and its ``"auto"`` defaults, device, dtype,
seed, checkpoint, TF32 and the rest), with what a result records of them."""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from doi import PointwiseDoI, PopulationDoI
from doi._points import count as points_count
from doi._points import describe as points_describe
from doi._points import is_structured
from qoi import QuantityOfInterest, as_qoi
from slices import Slice

from ._checkpoint import Checkpoint
from ._frozen import ModuleSurvey
from ._inputs import _check_points, _check_structured

NONFINITE = ("raise", "skip")
AUTO_BATCH_CPU = 64
AUTO_BATCH_CUDA = 4096


class _Query:
    """A validated query: the arguments of :func:`internal_influence`, normalised."""

    def __init__(
        self,
        slice: Any,
        qoi: Any,
        doi: Any,
        inputs: Any,
        batch_size: Any,
        device: Any,
        dtype: Any,
        multiply_activation: bool,
        seed: Any,
        channels_last: Any = None,
        checkpoint: Any = None,
        checkpoint_every: Any = 60.0,
        nonfinite: Any = "raise",
        affine_prefix: Any = True,
        tf32: Any = None,
        autocast: Any = None,
        compile: Any = False,
    ) -> None:
        if isinstance(slice, nn.Module):
            raise TypeError("slice: expected a slices.Slice (got an nn.Module); use Slice(model, layer) or input_influence(model, ...)")
        if not isinstance(slice, Slice):
            raise TypeError(f"slice: expected a slices.Slice (got {type(slice).__name__})")
        self.many = isinstance(qoi, (list, tuple))
        qois = list(qoi) if self.many else [qoi]
        if not qois:
            raise ValueError("qoi: the list of QoIs is empty")
        self.qois: list[QuantityOfInterest] = [as_qoi(q) for q in qois]
        if isinstance(doi, PopulationDoI):
            if inputs is not None:
                raise ValueError(f"inputs: {type(doi).__name__} brings its own data; pass inputs=None")
            self.population: PopulationDoI | None = doi
            self.each: PointwiseDoI = doi.each
        elif isinstance(doi, PointwiseDoI):
            if inputs is None:
                raise ValueError(f"inputs: {type(doi).__name__} explains given points; pass inputs, a tensor (N, *input_shape)")
            if is_structured(inputs):
                _check_structured(inputs, slice, doi, "inputs")
            elif not isinstance(inputs, Tensor):
                raise TypeError(f"inputs: expected a tensor (N, *input_shape), or a mapping or tuple of them (got {type(inputs).__name__})")
            else:
                if inputs.ndim < 1:
                    raise ValueError("inputs: expected a batch of points (N, *input_shape) (got a 0-d tensor); a shape (N,) means N scalar points")
                _check_points(inputs, slice, doi, "inputs")
            if points_count(inputs) == 0:
                shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else points_describe(inputs)
                raise ValueError(f"inputs: no points to explain (shape {shape})")
            self.population = None
            self.each = doi
        else:
            raise TypeError(
                "doi: expected a DistributionOfInterest (PointDoI, LineDoI, NoiseDoI, ClassDoI or DatasetDoI) "
                f"(got {type(doi).__name__})"
            )
        self.auto_batch = batch_size == "auto"
        if self.auto_batch:
            batch_size = AUTO_BATCH_CPU
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size: expected an int or 'auto' (got {type(batch_size).__name__} {batch_size!r})")
        elif batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1 (got {batch_size})")
        if not isinstance(multiply_activation, bool):
            raise TypeError(f"multiply_activation: expected a bool (got {type(multiply_activation).__name__})")
        if channels_last is not None and not isinstance(channels_last, bool):
            raise TypeError(f"channels_last: expected None, True or False (got {channels_last!r})")
        self.channels_last = channels_last
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite: expected 'raise' or 'skip' (got {nonfinite!r})")
        self.nonfinite: str = nonfinite
        if not isinstance(affine_prefix, bool):
            raise TypeError(f"affine_prefix: expected a bool (got {type(affine_prefix).__name__})")
        self.affine_prefix = affine_prefix
        if tf32 is not None and not isinstance(tf32, bool):
            raise TypeError(f"tf32: expected None, True or False (got {tf32!r})")
        self.tf32: bool | None = tf32
        if autocast is not None and autocast is not torch.bfloat16:
            raise ValueError(f"autocast: expected None or torch.bfloat16 (got {autocast!r}); float16 would need loss scaling for its gradients")
        self.autocast: torch.dtype | None = autocast
        if not isinstance(compile, bool):
            raise TypeError(f"compile: expected a bool (got {type(compile).__name__})")
        if compile and not (slice.is_split or slice.is_input):
            raise ValueError(
                f"compile: needs a slice split into two functions (sequential, graph or from_functions); {slice!r} is realised with hooks"
            )
        self.compile = compile
        self.checkpoint: Checkpoint | None = None
        if checkpoint is not None:
            if self.population is None:
                raise ValueError(
                    f"checkpoint: only population DoIs (ClassDoI, DatasetDoI) are checkpointed (got {type(doi).__name__}); "
                    "split a long pointwise query over its inputs instead"
                )
            self.checkpoint = Checkpoint(checkpoint, checkpoint_every)
        elif isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, float)) or not checkpoint_every >= 0:
            raise ValueError(f"checkpoint_every: expected seconds >= 0 (got {checkpoint_every!r})")
        self.seed_given = seed is not None
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None (got {type(seed).__name__})")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype: expected a floating torch.dtype (got {dtype!r})")
        try:
            dev = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError):
            raise ValueError(f"device: not a device: {device!r}") from None
        if dev is not None:
            try:
                torch.empty(0, device=dev)
            except (RuntimeError, AssertionError) as e:  # e.g. "Torch not compiled with CUDA enabled"
                raise ValueError(f"device: {device!r} is not available here ({e})") from None
        self.survey = ModuleSurvey(slice.modules())  # one walk: defaults, placement, freezing
        self.device = dev or self.survey.device or (inputs.device if isinstance(inputs, Tensor) else torch.device("cpu"))
        self.dtype = dtype or self.survey.dtype or (inputs.dtype if isinstance(inputs, Tensor) else torch.float32)
        if self.auto_batch and self.device.type == "cuda":
            batch_size = AUTO_BATCH_CUDA
        self.slice, self.doi, self.inputs = slice, doi, inputs
        self.batch_size, self.multiply, self.seed = batch_size, multiply_activation, seed

    def size_hint(self) -> int | None:
        """How many anchors the query has, when known without reading the data."""
        if self.population is not None:
            return self.population.size_hint()
        return points_count(self.inputs)

    def describe(self, qoi: QuantityOfInterest) -> dict[str, Any]:
        return {
            "slice": repr(self.slice),
            "layer": str(self.slice.cut) if self.slice.cut is not None else None,
            "doi": repr(self.doi),
            "qoi": repr(qoi),
            "multiply_activation": self.multiply,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "nonfinite": self.nonfinite,
            "affine_prefix": self.affine_prefix,
            "tf32": _tf32_in_effect(self.device, self.tf32),
            "autocast": None if self.autocast is None else str(self.autocast).replace("torch.", ""),
            "compile": self.compile,
            **({"checkpoint": self.checkpoint.path} if self.checkpoint is not None else {}),
        }

    def signature(self) -> tuple[Any, ...]:
        """What every process of a distributed query must agree on (besides the seed)."""
        what = {k: v for k, v in self.describe(self.qois[0]).items() if k not in ("seed", "device", "qoi")}
        return (tuple(sorted(what.items())), tuple(repr(q) for q in self.qois), self.size_hint())


def _tf32(allow: bool | None) -> Any:
    """Allow or forbid TF32 for convolutions and matrix products, restoring the settings
    after (``None``: leave them)."""
    return contextlib.nullcontext() if allow is None else _tf32_set(allow)


def _tf32_in_effect(device: torch.device, tf32: bool | None) -> dict[str, bool] | None:
    """Whether convolutions and matrix products may use TF32 during the query (CUDA only)."""
    if device.type != "cuda":
        return None
    if tf32 is not None:
        return {"convolutions": tf32, "matmul": tf32}
    return {"convolutions": bool(torch.backends.cudnn.allow_tf32), "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


@contextmanager
def _tf32_set(allow: bool) -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
