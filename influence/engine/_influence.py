"""The engine's entry points, :func:`internal_influence` and :func:`input_influence`:
check the query's options (:mod:`._options`), then run the integrator
(:mod:`._integrator`) with the model frozen, the TF32 setting asked for and a progress
bar, on this process's share of the anchors under ``torch.distributed``."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import Tensor, nn

from doi import DistributionOfInterest
from slices import Slice

from . import _distributed
from ._frozen import frozen
from ._integrator import _Integrator
from ._options import _Query, _tf32
from ._progress import progress_bar
from .result import InfluenceResult


def internal_influence(
    slice: Slice,
    qoi: Any,
    doi: DistributionOfInterest,
    inputs: Tensor | None = None,
    *,
    batch_size: int | Literal["auto"] = 64,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    multiply_activation: bool = False,
    seed: int | None = None,
    progress: bool = False,
    channels_last: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 60.0,
    nonfinite: Literal["raise", "skip"] = "raise",
    distributed: bool | None = None,
    affine_prefix: bool = True,
    tf32: bool | None = None,
    autocast: torch.dtype | None = None,
    compile: bool = False,
) -> InfluenceResult | list[InfluenceResult]:
    """Influence of ``qoi`` at the cut of ``slice`` under ``doi``.

    Args:
        slice: where to take the gradient (``Slice(model, layer)``).
        qoi: a QuantityOfInterest (or an int class, or a callable ``output -> (B,)``),
            or a list of them: one forward pass serves them all and a list of results
            comes back, in order.
        doi: a pointwise DoI (``PointDoI``, ``LineDoI``, ``NoiseDoI``), explaining each
            of ``inputs``; or a population DoI (``ClassDoI``, ``DatasetDoI``) with
            ``inputs=None``.
        inputs: ``(N, *input_shape)`` points for a pointwise DoI; a tensor of shape
            ``(N,)`` is ``N`` scalar points (Captum's convention). Integer points (token
            ids) are explained at a slice after them, usually the word embeddings:
            ``PointDoI``, or a line or noise with ``space="slice"`` (baselines from ids
            with :meth:`slices.Slice.baseline`). A mapping of tensors that share their
            first dimension (a tokenizer's ``BatchEncoding``) is given to the model as
            ``model(**inputs)``, a tuple as ``model(*inputs)``, by a hook slice after them;
            every tensor is taken row by row with its point (an attention mask travels
            with its tokens).
        batch_size: sample rows per forward/backward pass. ``"auto"``: 64 on the CPU
            (near the best throughput for small and mid-sized models there); on CUDA,
            start at 4096 rows and halve on out-of-memory until a batch fits (the largest
            power-of-two fraction that fits).
        device, dtype: where and in what precision to compute (default: the model's);
            a model elsewhere is copied there, the original is left alone.
        multiply_activation: multiply each anchor's influence by ``h(x) − h(b)``
            (the attribution form: integrated gradients, gradient × input, conductance).
        seed: seeds the DoI's random draws (drawn from torch's RNG when ``None``;
            recorded in ``result.query``). The same seed gives the same result.
        progress: show a progress bar over the anchors (tqdm when installed).
        channels_last: feed 4-D sample batches to the model in channels-last layout
            (faster convolutions on CPU). ``None`` (default): on CPU, falling back to
            the default layout if the model fails on the first batch (only for models
            with ``Conv2d`` layers); ``False``: never.
        checkpoint: a file where a population query (``ClassDoI``, ``DatasetDoI``) keeps
            its progress: the float64 sums, the counts and the number of points done,
            written atomically every ``checkpoint_every`` seconds (at the end of a chunk
            of anchors), when the query is interrupted (Ctrl-C, or an error) and at the
            end. Running the same query again resumes from it and gives exactly the
            result of an uninterrupted run (bit for bit, with the same batch size);
            a finished checkpoint returns the result at once. A checkpoint written by a
            different query (model weights, slice, DoI, QoIs, seed, dtype, device type,
            data) or a damaged file is refused with a ``ValueError``. With
            ``seed=None`` the checkpoint's seed is used.
        checkpoint_every: seconds between checkpoints (0: after every chunk).
        nonfinite: what to do when a QoI value or a gradient is NaN or infinite:
            ``"raise"`` a ``ValueError`` naming the anchor and the sample, or ``"skip"``
            the anchor as a whole (a pooled result averages the other anchors; a
            pointwise result has NaN values and standard errors for it), with a warning;
            ``result.query["skipped"]`` counts the skipped anchors.
        distributed: ``None`` (default): when ``torch.distributed`` is initialised with
            more than one process, shard the anchors over the processes (every process
            must make the same call; each returns the whole result); ``False``: run
            alone; ``True``: shard, and fail if no group is initialised.
        affine_prefix: for a line DoI, run the affine layers right after the line's
            space (linear, convolution, batch norm with running statistics, pooling,
            reshapes) once per anchor instead of once per sample: an affine map takes
            lines to lines. When the line lives at the cut (integrated gradients at the
            input, a slice-space line at a layer) the gradient is taken after those
            layers and its weighted sum pulled back through them once per anchor; when
            the line is in input space and the cut inside the model, they are the start
            of ``h``. Exact by linearity, up to rounding (:mod:`slices._affine`); it
            applies where ``torch.fx`` can trace the layers and no hooks are registered,
            and on CUDA only where the frontier is no larger than the line's space
            (a GPU pays for memory traffic, a CPU for arithmetic). ``False``: run every
            layer per sample.
        tf32: on CUDA, whether float32 convolutions and matrix products may use TF32
            tensor cores (10-bit mantissa) for the query; the setting is restored
            after. ``None`` (default): leave PyTorch's settings as they are (cuDNN
            convolutions use TF32 unless ``torch.backends.cudnn.allow_tf32`` is off;
            matrix products do not, unless ``torch.backends.cuda.matmul.allow_tf32``).
            ``False``: exact float32 (README "Performance": about 10× smaller error
            against float64 on a ResNet-50, at about twice the time). Recorded in
            ``result.query["tf32"]``; no effect on the CPU.
        autocast: ``torch.bfloat16`` for the fast mode: the per-sample forward and
            backward passes run under ``torch.autocast`` in bfloat16, while the cut's
            activations and gradients stay in ``dtype`` and the sums in float64. The
            per-anchor passes (``h`` at the anchors, ``δ``, the line's two ends for
            ``result.completeness``) run in full precision, so the completeness gap
            shows what the fast mode costs.
        compile: run ``g`` through ``torch.compile`` (worth it for many batches of the
            same shape; the first batches pay the compilation). Needs a slice split
            into two functions (not the hook realisation).

    Returns:
        :class:`InfluenceResult` (a list of them for a list of QoIs): ``values`` of shape
        ``(N, *unit)`` for a pointwise DoI, ``unit`` for a population DoI, where ``unit``
        is the shape of ``h(x)`` for one point.
    """
    query = _Query(
        slice, qoi, doi, inputs, batch_size, device, dtype, multiply_activation, seed, channels_last, checkpoint, checkpoint_every, nonfinite,
        affine_prefix, tf32=tf32, autocast=autocast, compile=compile,
    )  # fmt: skip
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected a bool (got {type(progress).__name__})")
    group = _distributed.current(distributed)
    total = query.size_hint()
    if group is not None and query.population is None and total is not None:
        lo, hi = group.block(total)
        total = hi - lo
    bar = progress_bar(progress and (group is None or group.rank == 0), total)
    try:
        with frozen(query.survey), _tf32(query.tf32), torch.inference_mode(False), torch.enable_grad():
            results = _Integrator(query, bar, group).run()
    finally:
        bar.close()
    return results if query.many else results[0]


def input_influence(model: nn.Module, qoi: Any, doi: DistributionOfInterest, inputs: Tensor | None = None, **options: Any) -> InfluenceResult | list[InfluenceResult]:
    """Influence on the inputs: :func:`internal_influence` at ``Slice(model, None)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (got {type(model).__name__})")
    return internal_influence(Slice(model, None), qoi, doi, inputs, **options)
