"""Pictures of explanations, drawn with matplotlib (an optional extra:
``pip install "influence-directed[viz]"``).

Every picture has two functions: ``*_figure(arrays, ...) -> matplotlib.figure.Figure``
draws it (for your own tweaks, and for tests that read the plotted values back from the
artists), and ``plot_*(path, arrays, ...) -> Path`` draws it and writes a PNG of exactly
``size = (width, height)`` pixels. Figures are made without ``pyplot`` (an Agg canvas of
their own), so nothing here touches a global backend or leaks open figures.

Signed attributions use a diverging colour map (``RdBu_r``: red for positive, blue for
negative) with limits symmetric around zero, so white is exactly zero.

* :func:`heatmaps_figure` — images with their attribution maps overlaid.
* :func:`neuron_grid_figure` — one row per neuron: its pooled map, then its most active
  images with their maps.
* :func:`audit_bars_figure` — share of attribution in a region per class, with error bars,
  for one or more models side by side, and the flag threshold.
* :func:`curves_figure` — deletion and insertion curves against random order.
* :func:`essence_figure` — top-k AUC per ranking against random units.
* :func:`contrast_figure` — the top neurons of a contrast with their error bars.
* :func:`token_heatmap_figure` — sentences, each token in a box coloured by its attribution
  (written straight to a PNG).

The ``*_arrays`` helpers turn the workflows' results into those arguments, e.g.
``plot_audit_bars("audit.png", **audit_arrays({"cued": cued, "control": control}))`` or
``plot_neuron_grid("neurons.png", **neuron_arrays(explain_neurons(...)))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "heatmaps_figure",
    "plot_heatmaps",
    "neuron_grid_figure",
    "plot_neuron_grid",
    "audit_bars_figure",
    "plot_audit_bars",
    "curves_figure",
    "plot_curves",
    "essence_figure",
    "plot_essence",
    "contrast_figure",
    "plot_contrast",
    "DIVERGING",
    "top_arrays",
    "neuron_arrays",
    "audit_arrays",
    "essence_arrays",
    "curves_arrays",
    "token_heatmap_figure",
]

DIVERGING = "RdBu_r"
_DPI = 100
_SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "influence.plots needs matplotlib, which is an optional extra: "
            'pip install "influence-directed[viz]" (or pip install matplotlib)'
        ) from None
    return matplotlib, Figure, FigureCanvasAgg


def _new_figure(size: tuple[int, int]) -> "Figure":
    _, Figure, FigureCanvasAgg = _matplotlib()
    width, height = _check_size(size)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_size(size: Any) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in size)):
        raise ValueError(f"plots: size must be (width, height) in pixels, each an int >= 16 (got {size!r})")
    return int(size[0]), int(size[1])


def _save(fig: "Figure", path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots: path must end in .png (got {str(path)!r})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    return path


def _array(value: Any, name: str, ndim: Sequence[int]) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.ndim not in ndim:
        raise ValueError(f"plots: {name} must have {' or '.join(map(str, ndim))} dims (got shape {a.shape})")
    return a


def _grey(image: np.ndarray) -> np.ndarray:
    """An image ``(C, H, W)`` / ``(H, W)`` as grey levels ``(H, W)`` in [0, 1] (the
    luminance of RGB, scaled into [0, 1] when it is not already there), so that colour
    in an overlay belongs to the attribution alone."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a[0] if a.shape[0] < 3 else 0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2]
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def _limit(m: np.ndarray) -> float:
    v = float(np.abs(m).max()) if m.size else 0.0
    return v if v > 0 else 1.0


def _overlay(ax: Any, image: np.ndarray | None, heat: np.ndarray, *, alpha: float, limit: float) -> Any:
    if image is not None:  # grey, low contrast (black shows dark grey, white light grey)
        ax.imshow(_grey(image), cmap="gray", vmin=-0.2, vmax=1.5, interpolation="nearest").set_label("image")
    # over an image, opacity grows with |attribution| (alpha · sqrt(|m| / limit)): zero is transparent
    opacity = alpha * np.sqrt(np.clip(np.abs(heat) / limit, 0, 1)) if image is not None else None
    im = ax.imshow(heat, cmap=DIVERGING, vmin=-limit, vmax=limit, alpha=opacity, interpolation="nearest")
    im.set_label("attribution")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def heatmaps_figure(
    images: Any,
    maps: Any,
    *,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    size: tuple[int, int] | None = None,
    alpha: float = 0.9,
    shared_scale: bool = False,
) -> "Figure":
    """Images ``(N, C, H, W)`` or ``(N, H, W)``, in grey, with attribution maps
    ``(N, H, W)`` overlaid (diverging colours, symmetric limits per image, or shared by all with
    ``shared_scale``). Pass ``images=None`` to draw the maps alone."""
    heat = _array(maps, "maps", (3,))
    n = heat.shape[0]
    imgs = None if images is None else _array(images, "images", (3, 4))
    if imgs is not None and (imgs.shape[0] != n or imgs.shape[-2:] != heat.shape[-2:]):
        raise ValueError(f"plots: images {imgs.shape} and maps {heat.shape} do not match")
    ncols = ncols or min(n, 6)
    nrows = -(-n // ncols)
    size = size or (170 * ncols + 70, 190 * nrows + 20)
    fig = _new_figure(size)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    shared = _limit(heat)
    last = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        last = _overlay(ax, None if imgs is None else imgs[i], heat[i], alpha=alpha, limit=shared if shared_scale else _limit(heat[i]))
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=8)
    if last is not None:
        bar = fig.colorbar(last, ax=axes, shrink=0.8, fraction=0.05)
        bar.set_label("attribution" + ("" if shared_scale else " (scaled per image)"), fontsize=8)
        bar.set_ticks([-last.norm.vmax, 0, last.norm.vmax] if shared_scale else [])
        bar.ax.tick_params(labelsize=7)
    return fig


def plot_heatmaps(path: str | os.PathLike[str], images: Any, maps: Any, **options: Any) -> Path:
    """:func:`heatmaps_figure` written to ``path`` (a PNG); returns the path."""
    return _save(heatmaps_figure(images, maps, **options), path)


def neuron_grid_figure(
    pooled: Any,
    images: Any,
    maps: Any,
    *,
    names: Sequence[str],
    pooled_title: str = "pooled",
    activations: Any = None,
    size: tuple[int, int] | None = None,
    alpha: float = 0.9,
) -> "Figure":
    """One row per neuron: its pooled attribution map ``pooled[k] (H, W)``, then its
    example images ``images[k] (M, C, H, W)`` with their maps ``maps[k] (M, H, W)``
    overlaid; ``activations[k] (M,)`` (optional) titles the examples."""
    pool = _array(pooled, "pooled", (3,))
    heat = _array(maps, "maps", (4,))
    imgs = _array(images, "images", (4, 5))
    k, m = heat.shape[:2]
    if pool.shape[0] != k or imgs.shape[:2] != (k, m) or len(names) != k:
        raise ValueError(f"plots: pooled {pool.shape}, images {imgs.shape}, maps {heat.shape} and {len(names)} names do not match")
    acts = None if activations is None else _array(activations, "activations", (2,))
    size = size or (150 * (m + 1) + 40, 150 * k + 40)
    fig = _new_figure(size)
    axes = fig.subplots(k, m + 1, squeeze=False)
    for r in range(k):
        _overlay(axes[r, 0], None, pool[r], alpha=1.0, limit=_limit(pool[r]))
        axes[r, 0].set_ylabel(names[r], fontsize=9)
        if r == 0:
            axes[r, 0].set_title(pooled_title, fontsize=8)
        for c in range(m):
            ax = axes[r, c + 1]
            _overlay(ax, imgs[r, c], heat[r, c], alpha=alpha, limit=_limit(heat[r, c]))
            if acts is not None:
                ax.set_title(f"activation {acts[r, c]:.3g}", fontsize=8)
    fig.suptitle("what each neuron sees: red = raises it, blue = lowers it", fontsize=9)
    return fig


def plot_neuron_grid(path: str | os.PathLike[str], pooled: Any, images: Any, maps: Any, **options: Any) -> Path:
    """:func:`neuron_grid_figure` written to ``path``; returns the path."""
    return _save(neuron_grid_figure(pooled, images, maps, **options), path)


def audit_bars_figure(
    labels: Sequence[Any],
    shares: Mapping[str, Any],
    stderr: Mapping[str, Any],
    area: Any,
    *,
    factor: float,
    flagged: Mapping[str, Any] | None = None,
    ylabel: str = "share of positive attribution in the region",
    size: tuple[int, int] = (720, 400),
) -> "Figure":
    """Per class (``labels``), one bar per series (e.g. ``{"cued model": ...,
    "control model": ...}``) of the share of attribution in the region, with ``stderr``
    error bars, a grey bar for the region's ``area`` share ``(L,)`` and a black tick at
    the flag threshold ``factor × area``; flagged bars are hatched."""
    names = list(shares)
    a = _array(area, "area", (1,))
    L = len(labels)
    if a.shape[0] != L or any(_array(shares[s], "shares", (1,)).shape[0] != L for s in names):
        raise ValueError(f"plots: shares and area must have one value per label ({L})")
    fig = _new_figure(size)
    ax = fig.subplots()
    x = np.arange(L, dtype=np.float64)
    width = 0.8 / (len(names) + 1)
    ax.bar(x - 0.4 + width / 2, a, width, color="#bbbbbb", label="area share").set_label("area share")
    for j, s in enumerate(names):
        h = _array(shares[s], "shares", (1,))
        e = _array(stderr[s], "stderr", (1,))
        flags = np.zeros(L, bool) if flagged is None or s not in flagged else _array(flagged[s], "flagged", (1,)).astype(bool)
        pos = x - 0.4 + width * (j + 1.5)
        bars = ax.bar(pos, h, width, yerr=e, capsize=3, color=_SERIES_COLOURS[j % len(_SERIES_COLOURS)], label=s)
        bars.set_label(s)
        for rect, f in zip(bars.patches, flags):
            if f:
                rect.set_hatch("//")
                ax.annotate("flag", (rect.get_x() + rect.get_width() / 2, rect.get_height()), xytext=(0, 8),
                            textcoords="offset points", ha="center", fontsize=7, color="#b00000")
    ax.hlines(factor * a, x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1, label=f"flag threshold ({factor:g} × area)")
    ax.set_xticks(x, [str(v) for v in labels])
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_ylim(0, max(1.08, float((factor * a).max()) + 0.05))  # shares are <= 1; show the threshold even above
    ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_audit_bars(path: str | os.PathLike[str], labels: Sequence[Any], shares: Mapping[str, Any], stderr: Mapping[str, Any], area: Any, **options: Any) -> Path:
    """:func:`audit_bars_figure` written to ``path``; returns the path."""
    return _save(audit_bars_figure(labels, shares, stderr, area, **options), path)


def curves_figure(
    fractions: Any,
    deletion: Mapping[str, Any],
    insertion: Mapping[str, Any],
    *,
    ylabel: str = "probability of the class",
    size: tuple[int, int] = (760, 340),
) -> "Figure":
    """Two panels, deletion and insertion: one line per order (e.g.
    ``{"integrated gradients": curve, "random": curve}``, each ``(S + 1,)`` at
    ``fractions``); the legend gives each curve's area."""
    from .curves import trapezoid_area

    t = _array(fractions, "fractions", (1,))
    fig = _new_figure(size)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, curves, title in ((axes[0], deletion, "deletion (lower is better)"), (axes[1], insertion, "insertion (higher is better)")):
        for j, (name, curve) in enumerate(curves.items()):
            c = _array(curve, name, (1,))
            if c.shape != t.shape:
                raise ValueError(f"plots: curve {name!r} has shape {c.shape}; fractions have {t.shape}")
            style = "--" if "random" in name else "-"
            line, = ax.plot(t, c, style, color=_SERIES_COLOURS[j % len(_SERIES_COLOURS)], marker="o", markersize=2.5)
            line.set_label(f"{name} (area {float(trapezoid_area(t, c)):.3f})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of pixels " + ("removed" if ax is axes[0] else "inserted"))
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(ylabel, fontsize=9)
    return fig


def plot_curves(path: str | os.PathLike[str], fractions: Any, deletion: Mapping[str, Any], insertion: Mapping[str, Any], **options: Any) -> Path:
    """:func:`curves_figure` written to ``path``; returns the path."""
    return _save(curves_figure(fractions, deletion, insertion, **options), path)


def essence_figure(
    ks: Sequence[int],
    aucs: Mapping[str, Any],
    random_median: Any,
    *,
    random_q25: Any = None,
    random_q75: Any = None,
    full_auc: float | None = None,
    title: str = "",
    size: tuple[int, int] = (520, 360),
) -> "Figure":
    """Top-k ROC AUC against k, one line per ranking (``aucs[name] (K,)``), the median
    AUC of random units (dashed, with the quartiles shaded) and the full model's AUC."""
    k = np.asarray(list(ks), dtype=np.float64)
    med = _array(random_median, "random_median", (1,))
    fig = _new_figure(size)
    ax = fig.subplots()
    for j, (name, v) in enumerate(aucs.items()):
        line, = ax.plot(k, _array(v, name, (1,)), "-o", color=_SERIES_COLOURS[j % len(_SERIES_COLOURS)], markersize=4)
        line.set_label(f"top-k by {name}")
    line, = ax.plot(k, med, "--s", color="#555555", markersize=4)
    line.set_label("random k (median)")
    if random_q25 is not None and random_q75 is not None:
        ax.fill_between(k, _array(random_q25, "random_q25", (1,)), _array(random_q75, "random_q75", (1,)), color="#999999", alpha=0.3,
                        label="random k (quartiles)")
    if full_auc is not None:
        ax.axhline(full_auc, color="black", linewidth=0.8, linestyle=":", label=f"all units ({full_auc:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(k, [str(int(v)) for v in k])
    ax.set_xlabel("k units kept")
    ax.set_ylabel("ROC AUC")
    ax.set_ylim(0.3, 1.02)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return fig


def plot_essence(path: str | os.PathLike[str], ks: Sequence[int], aucs: Mapping[str, Any], random_median: Any, **options: Any) -> Path:
    """:func:`essence_figure` written to ``path``; returns the path."""
    return _save(essence_figure(ks, aucs, random_median, **options), path)


def contrast_figure(
    names: Sequence[str],
    values: Any,
    stderr: Any,
    *,
    separated: Any = None,
    threshold: float = 3.0,
    title: str = "",
    ylabel: str = "influence",
    size: tuple[int, int] = (560, 360),
) -> "Figure":
    """The top neurons of a contrast: one bar per neuron (``values (K,)``) with
    ``threshold × stderr`` error bars; bars separated from zero are solid, the others
    pale."""
    v = _array(values, "values", (1,))
    e = _array(stderr, "stderr", (1,))
    if v.shape != e.shape or len(names) != v.shape[0]:
        raise ValueError(f"plots: names ({len(names)}), values {v.shape} and stderr {e.shape} do not match")
    sep = np.abs(v) > threshold * e if separated is None else _array(separated, "separated", (1,)).astype(bool)
    fig = _new_figure(size)
    ax = fig.subplots()
    x = np.arange(v.shape[0])
    colours = [("#b2182b" if val >= 0 else "#2166ac") for val in v]
    bars = ax.bar(x, v, 0.7, yerr=threshold * e, capsize=3, color=colours)
    for rect, s in zip(bars.patches, sep):
        rect.set_alpha(1.0 if s else 0.35)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [str(n) for n in names], rotation=30 if max(len(str(n)) for n in names) > 4 else 0, fontsize=8)
    ax.set_ylabel(f"{ylabel} (bars: ± {threshold:g} stderr)", fontsize=9)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_contrast(path: str | os.PathLike[str], names: Sequence[str], values: Any, stderr: Any, **options: Any) -> Path:
    """:func:`contrast_figure` written to ``path``; returns the path."""
    return _save(contrast_figure(names, values, stderr, **options), path)


# --- the workflows' results as the arguments of the pictures ---------------------------------


def top_arrays(top: Any) -> dict[str, Any]:
    """:func:`contrast_figure`'s arguments from a :class:`~influence.TopNeurons`."""
    what = "ch " if top.by == "channel" else ""
    return {
        "names": [f"{what}{e.index}" for e in top.entries],
        "values": [e.value for e in top.entries],
        "stderr": [e.stderr for e in top.entries],
        "separated": [e.separated for e in top.entries],
        "threshold": top.threshold,
        "ylabel": top.ranking.replace("_", " "),
        "title": f"{top.layer}: top {top.by}s for f_{top.a} − f_{top.b}",
    }


def neuron_arrays(views: Sequence[Any], pooled_title: str = "pooled") -> dict[str, Any]:
    """:func:`neuron_grid_figure`'s arguments from :func:`~influence.explain_neurons`'s views."""
    import torch

    return {
        "pooled": torch.stack([v.pooled_map() for v in views]),
        "images": torch.stack([v.images for v in views]),
        "maps": torch.stack([v.example_maps() for v in views]),
        "names": [v.name for v in views],
        "activations": torch.stack([v.activations for v in views]),
        "pooled_title": pooled_title,
    }


def audit_arrays(results: Any, share: str | None = None) -> dict[str, Any]:
    """:func:`audit_bars_figure`'s arguments from one :class:`~influence.AuditResult` or a
    mapping of names to results over the same classes (drawn side by side). ``share``:
    ``"positive"`` or ``"absolute"`` (default: the one the results' flags compare)."""
    named = results if isinstance(results, Mapping) else {"model": results}
    first = next(iter(named.values()))
    share = first.flag_on if share is None else share
    if share not in ("positive", "absolute"):
        raise ValueError(f"audit_arrays: share must be 'positive' or 'absolute' (got {share!r})")
    labels = [r.label for r in first.rows]
    for name, res in named.items():
        if [r.label for r in res.rows] != labels:
            raise ValueError(f"audit_arrays: {name!r} audits classes {[r.label for r in res.rows]}, not {labels}")
    return {
        "labels": labels,
        "shares": {n: [getattr(r, f"{share}_share") for r in res.rows] for n, res in named.items()},
        "stderr": {n: [getattr(r, f"{share}_stderr") for r in res.rows] for n, res in named.items()},
        "area": [r.area_share for r in first.rows],
        "factor": first.factor,
        "flagged": {n: [r.flagged for r in res.rows] for n, res in named.items()},
        "ylabel": f"share of {'positive attribution' if share == 'positive' else '|attribution|'} in the region",
    }


def essence_arrays(essence: Any) -> dict[str, Any]:
    """:func:`essence_figure`'s arguments from an :class:`~influence.EssenceResult`."""
    first = essence.rankings[0]
    return {
        "ks": list(essence.ks),
        "aucs": {r: essence.auc(r) for r in essence.rankings},
        "random_median": essence.random_median(),
        "random_q25": [essence.row(first, k).random_q25 for k in essence.ks],
        "random_q75": [essence.row(first, k).random_q75 for k in essence.ks],
        "full_auc": essence.full_auc,
        "title": f"essence check of {essence.layer} ({essence.units} {essence.by}s): AUC of {essence.qoi}",
    }


def curves_arrays(curves: Any, name: str = "attribution order") -> dict[str, Any]:
    """:func:`curves_figure`'s arguments (mean curves over the images) from
    :class:`~influence.Curves`."""
    return {
        "fractions": curves.fractions,
        "deletion": {name: curves.deletion.mean(0), "random order": curves.random_deletion.mean(0)},
        "insertion": {name: curves.insertion.mean(0), "random order": curves.random_insertion.mean(0)},
        "ylabel": f"{curves.score} of the class",
    }


# --- token heatmaps (text) ------------------------------------------------------------------

_TOKEN_FONT = 10  # points; monospace, so a token's width in pixels follows from its length
_TOKEN_CHAR = _TOKEN_FONT * _DPI / 72 * 0.602  # DejaVu Sans Mono advances 0.602 em per character
_TOKEN_PAD = 4  # pixels either side of a token's text inside its box
_TOKEN_GAP = 4  # pixels between boxes
_TOKEN_BOX = 20  # box height in pixels
_TOKEN_LINE = 25  # pixels from one line of boxes to the next
_TOKEN_TITLE = 17  # pixels for a sentence's title
_TOKEN_SPACE = 10  # pixels between sentences
_TOKEN_MARGIN = 10
_TOKEN_WIDTH = 1000  # the widest line of boxes, in pixels, before a sentence wraps


def _token_rgb(value: float, limit: float) -> tuple[float, float, float]:
    """The colour of a token box, RGB in [0, 1]: the scale of :meth:`influence.text.TokenHeatmap.html`
    (white at 0, full red at ``+limit``, full blue at ``-limit``, linear in between,
    clipped beyond)."""
    t = 0.0 if limit == 0 else max(-1.0, min(1.0, float(value) / limit))
    fade = round(255 * (1 - abs(t))) / 255
    return (1.0, fade, fade) if t > 0 else (fade, fade, 1.0) if t < 0 else (1.0, 1.0, 1.0)


def _token_layout(heatmaps: Sequence[Any], titles: Sequence[str] | None, per_row: int | None) -> tuple[int, int, list[dict[str, Any]]]:
    """Where everything goes, in pixels from the top left: ``(width, height, items)``;
    each item is ``{"kind": "title", "x", "y", "text"}`` or ``{"kind": "token", "x", "y",
    "w", "h", "text", "value", "colour", "sentence", "position"}`` (a box: top left, size)."""
    if per_row is not None and (isinstance(per_row, bool) or not isinstance(per_row, int) or per_row < 1):
        raise ValueError(f"plots: per_row must be a positive int or None (got {per_row!r})")
    if titles is not None and len(titles) != len(heatmaps):
        raise ValueError(f"plots: {len(titles)} titles for {len(heatmaps)} heatmaps")
    items: list[dict[str, Any]] = []
    y = _TOKEN_MARGIN
    widest = 0.0
    for s, heat in enumerate(heatmaps):
        tokens, values = tuple(heat.tokens), tuple(float(v) for v in heat.values)
        if len(tokens) != len(values):
            raise ValueError(f"plots: heatmap {s} has {len(tokens)} tokens and {len(values)} values")
        limit = max((abs(v) for v in values), default=0.0)
        if titles is not None:
            items.append({"kind": "title", "x": _TOKEN_MARGIN, "y": y, "text": str(titles[s])})
            widest = max(widest, len(str(titles[s])) * _TOKEN_CHAR * 0.9)
            y += _TOKEN_TITLE
        x, on_line = 0.0, 0
        for p, (tok, v) in enumerate(zip(tokens, values)):
            w = max(1, len(str(tok))) * _TOKEN_CHAR + 2 * _TOKEN_PAD
            if on_line and ((per_row is not None and on_line >= per_row) or (per_row is None and x + w > _TOKEN_WIDTH)):
                x, on_line = 0.0, 0
                y += _TOKEN_LINE
            items.append({"kind": "token", "x": _TOKEN_MARGIN + x, "y": y, "w": w, "h": _TOKEN_BOX, "text": str(tok), "value": v,
                          "colour": _token_rgb(v, limit), "sentence": s, "position": p})
            x += w + _TOKEN_GAP
            on_line += 1
            widest = max(widest, x - _TOKEN_GAP)
        y += _TOKEN_LINE + _TOKEN_SPACE
    width = int(np.ceil(max(widest, 200.0))) + 2 * _TOKEN_MARGIN
    height = max(int(np.ceil(y - _TOKEN_SPACE + _TOKEN_MARGIN - (_TOKEN_LINE - _TOKEN_BOX))), 40)
    return width, height, items


def token_heatmap_figure(
    heatmaps: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    titles: Sequence[str] | None = None,
    per_row: int | None = None,
) -> Path:
    """Sentences as PNG token heatmaps: each :class:`~influence.text.TokenHeatmap`
    (``tokens``, ``values``, padding already dropped) is a line of boxes, one per token,
    coloured on the scale of :meth:`TokenHeatmap.html <influence.text.TokenHeatmap.html>`:
    diverging and symmetric per sentence (red positive, blue negative, white exactly
    zero, full colour at the sentence's largest ``|value|``). A long sentence wraps
    (after ``per_row`` tokens, or when the line reaches 1000 pixels); ``titles`` (one
    per sentence) go above the sentences. Written to ``path`` (a PNG) without pyplot;
    returns the path.
    """
    _, Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.patches import Rectangle

    heatmaps = list(heatmaps)
    if not heatmaps:
        raise ValueError("plots: token_heatmap_figure needs at least one heatmap")
    width, height, items = _token_layout(heatmaps, None if titles is None else list(titles), per_row)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # pixels, from the top left
    ax.set_axis_off()
    for it in items:
        if it["kind"] == "title":
            ax.text(it["x"], it["y"] + 2, it["text"], fontsize=8, va="top", ha="left", color="#333333")
            continue
        box = Rectangle((it["x"], it["y"]), it["w"], it["h"], facecolor=it["colour"], edgecolor="#cccccc", linewidth=0.6)
        box.set_label(f"token {it['sentence']}:{it['position']}")
        ax.add_patch(box)
        ax.text(it["x"] + it["w"] / 2, it["y"] + it["h"] / 2, it["text"], fontsize=_TOKEN_FONT, family="DejaVu Sans Mono",
                ha="center", va="center_baseline", color="white" if min(it["colour"]) < 0.4 else "black")
    return _save(fig, path)
