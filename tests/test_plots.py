"""Every picture type: the PNG exists with the requested size in pixels, is not blank, and the
figure's artists hold exactly the arrays they were given (image data, bar heights, error bar
lengths, line data). Colours are checked end to end on one picture: the largest positive
attribution is drawn in the diverging map's red end and the most negative in its blue end.
Without matplotlib the functions fail with a message naming the ``viz`` extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import matplotlib  # the viz extra; the test extra installs it too
from matplotlib.container import BarContainer
from matplotlib.image import imread

from influence import plots


def read_png(path: Path) -> np.ndarray:
    assert path.exists() and path.suffix == ".png"
    return imread(path)


def check_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Exactly ``size = (width, height)`` pixels, and not blank (its pixels vary)."""
    image = read_png(path)
    assert image.shape[:2] == (size[1], size[0])
    assert float(image[..., :3].var()) > 1e-4
    return image


def attribution_images(ax: matplotlib.axes.Axes) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for im in ax.get_images() if im.get_label() == "attribution"]


@pytest.fixture
def arrays(rng: torch.Generator) -> dict[str, torch.Tensor]:
    return {"images": torch.rand(5, 3, 8, 8, generator=rng), "maps": torch.randn(5, 8, 8, generator=rng, dtype=torch.float64)}


def test_heatmaps(tmp_path: Path, arrays: dict[str, torch.Tensor]) -> None:
    images, maps = arrays["images"], arrays["maps"]
    fig = plots.heatmaps_figure(images, maps, titles=[f"image {i}" for i in range(5)], ncols=3)
    panels = [ax for ax in fig.axes if attribution_images(ax)]
    assert len(panels) == 5
    for i, ax in enumerate(panels):
        (shown,) = attribution_images(ax)
        np.testing.assert_array_equal(shown, maps[i].numpy())
        (im,) = [im for im in ax.get_images() if im.get_label() == "attribution"]
        limit = float(maps[i].abs().max())
        assert im.get_clim() == pytest.approx((-limit, limit))  # symmetric: white is zero
        assert im.get_cmap().name == plots.DIVERGING
        (grey,) = [np.asarray(g.get_array()) for g in ax.get_images() if g.get_label() == "image"]
        rgb = images[i].double().numpy()
        np.testing.assert_allclose(grey, 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-12)
        assert ax.get_title() == f"image {i}"
    shared = plots.heatmaps_figure(images, maps, shared_scale=True)
    limit = float(maps.abs().max())
    for ax in shared.axes:
        for im in ax.get_images():
            if im.get_label() == "attribution":
                assert im.get_clim() == pytest.approx((-limit, limit))
    path = plots.plot_heatmaps(tmp_path / "heat.png", images, maps, size=(500, 300))
    check_png(path, (500, 300))


def test_heatmap_colours_end_to_end(tmp_path: Path) -> None:
    """A map with one +1 cell and one −1 cell, drawn alone: the PNG holds the colour map's
    two ends (red for positive, blue for negative)."""
    heat = np.zeros((1, 4, 4))
    heat[0, 0, 0], heat[0, 3, 3] = 1.0, -1.0
    png = check_png(plots.plot_heatmaps(tmp_path / "ends.png", None, heat, size=(300, 300)), (300, 300))[..., :3]
    cmap = matplotlib.colormaps[plots.DIVERGING]
    for end in (1.0, 0.0):
        colour = np.asarray(cmap(end)[:3])
        assert (np.abs(png - colour).max(-1) < 0.02).sum() > 100  # a whole cell of that colour
    assert cmap(1.0)[0] > cmap(1.0)[2] and cmap(0.0)[2] > cmap(0.0)[0]  # red end, blue end


def test_neuron_grid(tmp_path: Path, rng: torch.Generator) -> None:
    k, m = 3, 2
    pooled = torch.randn(k, 8, 8, generator=rng)
    images = torch.rand(k, m, 3, 8, 8, generator=rng)
    maps = torch.randn(k, m, 8, 8, generator=rng)
    acts = torch.rand(k, m, generator=rng)
    names = [f"layer[{i}]" for i in range(k)]
    fig = plots.neuron_grid_figure(pooled, images, maps, names=names, activations=acts)
    axes = np.array(fig.axes).reshape(k, m + 1)
    for r in range(k):
        (shown,) = attribution_images(axes[r, 0])
        np.testing.assert_array_equal(shown, pooled[r].numpy())
        assert axes[r, 0].get_ylabel() == names[r]
        for c in range(m):
            (shown,) = attribution_images(axes[r, c + 1])
            np.testing.assert_array_equal(shown, maps[r, c].numpy())
            assert axes[r, c + 1].get_title() == f"activation {float(acts[r, c]):.3g}"
    path = plots.plot_neuron_grid(tmp_path / "grid.png", pooled, images, maps, names=names, size=(450, 400))
    check_png(path, (450, 400))
    with pytest.raises(ValueError, match="do not match"):
        plots.neuron_grid_figure(pooled, images, maps, names=names[:2])


def error_lengths(bars: BarContainer) -> np.ndarray:
    """Half-lengths of a bar container's vertical error bars."""
    (segments,) = [c.get_segments() for c in bars.errorbar.lines[2]]
    return np.array([(s[1][1] - s[0][1]) / 2 for s in segments])


def test_audit_bars(tmp_path: Path) -> None:
    labels = [0, 1, 2, 3]
    shares = {"cued": np.array([0.01, 0.02, 0.7, 0.03]), "control": np.array([0.02, 0.01, 0.1, 0.02])}
    stderr = {"cued": np.array([0.001, 0.002, 0.01, 0.003]), "control": np.array([0.002, 0.001, 0.01, 0.002])}
    area = np.array([0.035, 0.035, 0.035, 0.04])
    flagged = {"cued": [False, False, True, False], "control": [False] * 4}
    fig = plots.audit_bars_figure(labels, shares, stderr, area, factor=5.0, flagged=flagged)
    (ax,) = fig.axes
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == ["area share", "cued", "control"]
    np.testing.assert_allclose([p.get_height() for p in containers[0].patches], area)
    for container, name in zip(containers[1:], ("cued", "control")):
        np.testing.assert_allclose([p.get_height() for p in container.patches], shares[name])
        np.testing.assert_allclose(error_lengths(container), stderr[name], atol=1e-12)
        assert [bool(p.get_hatch()) for p in container.patches] == list(flagged[name])
    (thresholds,) = [c for c in ax.collections if "flag threshold" in str(c.get_label())]
    np.testing.assert_allclose([seg[0][1] for seg in thresholds.get_segments()], 5.0 * area)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    check_png(plots.plot_audit_bars(tmp_path / "audit.png", labels, shares, stderr, area, factor=5.0, size=(640, 360)), (640, 360))


def test_curves(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 6)
    deletion = {"ig": np.array([1.0, 0.4, 0.2, 0.1, 0.05, 0.0]), "random": np.linspace(1, 0, 6)}
    insertion = {"ig": np.array([0.0, 0.7, 0.9, 0.95, 1.0, 1.0]), "random": np.linspace(0, 1, 6)}
    fig = plots.curves_figure(t, deletion, insertion)
    for ax, curves in zip(fig.axes, (deletion, insertion)):
        lines = ax.get_lines()
        assert len(lines) == 2
        for line, (name, curve) in zip(lines, curves.items()):
            np.testing.assert_array_equal(line.get_xdata(), t)
            np.testing.assert_array_equal(line.get_ydata(), curve)
            area = float(np.trapezoid(curve, t))
            assert line.get_label() == f"{name} (area {area:.3f})"
    check_png(plots.plot_curves(tmp_path / "curves.png", t, deletion, insertion, size=(700, 300)), (700, 300))
    with pytest.raises(ValueError, match="has shape"):
        plots.curves_figure(t, {"x": np.zeros(3)}, insertion)


def test_essence(tmp_path: Path) -> None:
    ks = [1, 2, 4, 8]
    aucs = {"contrast": [0.9, 0.95, 0.97, 0.99], "influence": [0.5, 0.5, 0.6, 0.7]}
    median, q25, q75 = [0.5, 0.55, 0.7, 0.8], [0.5, 0.5, 0.6, 0.7], [0.55, 0.7, 0.8, 0.9]
    fig = plots.essence_figure(ks, aucs, median, random_q25=q25, random_q75=q75, full_auc=0.98, title="t")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    for name, v in aucs.items():
        np.testing.assert_array_equal(lines[f"top-k by {name}"].get_ydata(), v)
        np.testing.assert_array_equal(lines[f"top-k by {name}"].get_xdata(), ks)
    np.testing.assert_array_equal(lines["random k (median)"].get_ydata(), median)
    assert lines["all units (0.980)"].get_ydata()[0] == 0.98
    check_png(plots.plot_essence(tmp_path / "essence.png", ks, aucs, median, size=(480, 320)), (480, 320))


def test_contrast(tmp_path: Path) -> None:
    names = ["ch 3", "ch 1", "ch 0"]
    values, stderr = np.array([2.0, 1.0, -0.2]), np.array([0.1, 0.5, 0.1])
    fig = plots.contrast_figure(names, values, stderr, threshold=3.0)
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    np.testing.assert_allclose([p.get_height() for p in bars.patches], values)
    np.testing.assert_allclose(error_lengths(bars), 3.0 * stderr)
    # |v| > 3 stderr: 2.0 > 0.3 (solid), 1.0 < 1.5 (pale), 0.2 < 0.3 (pale)
    assert [p.get_alpha() for p in bars.patches] == [1.0, 0.35, 0.35]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    check_png(plots.plot_contrast(tmp_path / "contrast.png", names, values, stderr, size=(400, 300)), (400, 300))


def test_size_and_path_are_checked(tmp_path: Path, arrays: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match=r"size must be \(width, height\)"):
        plots.heatmaps_figure(arrays["images"], arrays["maps"], size=(10, 10))
    with pytest.raises(ValueError, match="must end in .png"):
        plots.plot_heatmaps(tmp_path / "x.jpg", arrays["images"], arrays["maps"])
    with pytest.raises(ValueError, match="do not match"):
        plots.heatmaps_figure(arrays["images"][:2], arrays["maps"])


def test_without_matplotlib_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, arrays: dict[str, torch.Tensor]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"influence-directed\[viz\]"):
        plots.heatmaps_figure(arrays["images"], arrays["maps"])


def test_no_global_pyplot_state(arrays: dict[str, torch.Tensor]) -> None:
    """Figures have their own Agg canvas; pyplot is never imported by the module."""
    fig = plots.heatmaps_figure(arrays["images"], arrays["maps"])
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    assert "matplotlib.pyplot" not in sys.modules or not hasattr(plots, "plt")


def test_token_heatmap_png(tmp_path: Path) -> None:
    """Token heatmaps as a PNG: one box per token, red for positive, blue for negative, white
    for zero (the scale of ``TokenHeatmap.html``, per sentence), read back from the pixels
    inside each box; long sentences wrap; titles and ``per_row`` are checked."""
    from influence.text import TokenHeatmap, _colour

    short = TokenHeatmap(("[CLS]", "good", "zq", "bad", "the", "[SEP]"), (0.0, 0.5, 2.0, -2.0, 0.0, -1.0))
    long = TokenHeatmap(tuple(f"word{i}" for i in range(80)), tuple(float(i % 5 - 2) for i in range(80)))
    path = plots.token_heatmap_figure([short, long], tmp_path / "tokens.png", titles=["short", "long"])
    png = read_png(path)[..., :3]
    width, height, items = plots._token_layout([short, long], ["short", "long"], None)
    assert png.shape[:2] == (height, width) and 300 < width <= 1100 and 60 < height < 400
    boxes = [it for it in items if it["kind"] == "token"]
    assert len(boxes) == 6 + 80
    assert len({it["y"] for it in boxes if it["sentence"] == 1}) > 1  # the long sentence wraps
    assert max(it["x"] + it["w"] for it in boxes) < width

    def box_colour(it: dict) -> np.ndarray:
        """The most common colour inside a box (its fill; the token's glyphs are thin)."""
        inner = png[int(it["y"]) + 3 : int(it["y"] + it["h"]) - 2, int(it["x"]) + 3 : int(it["x"] + it["w"]) - 2].reshape(-1, 3)
        colours, counts = np.unique(np.round(inner * 255).astype(int), axis=0, return_counts=True)
        return colours[counts.argmax()] / 255

    first = [it for it in boxes if it["sentence"] == 0]
    np.testing.assert_allclose(box_colour(first[2]), (1, 0, 0), atol=0.01)  # the largest positive: full red
    np.testing.assert_allclose(box_colour(first[3]), (0, 0, 1), atol=0.01)  # the most negative: full blue
    np.testing.assert_allclose(box_colour(first[4]), (1, 1, 1), atol=0.01)  # zero: white
    np.testing.assert_allclose(box_colour(first[1]), (1, 0.75, 0.75), atol=0.01)  # a quarter of the limit: pale red
    np.testing.assert_allclose(box_colour(first[5]), (0.5, 0.5, 1), atol=0.01)  # half the limit, negative: mid blue
    for it in first:  # the same scale as the HTML rendering
        r, g, b = (round(255 * c) for c in box_colour(it))
        assert plots._token_rgb(it["value"], 2.0) == pytest.approx((r / 255, g / 255, b / 255), abs=0.005)
        assert f"rgb({r}, {g}, {b})" == _colour(it["value"], 2.0)
    # per_row wraps after that many tokens
    _, _, rows = plots._token_layout([long], None, 10)
    assert len({it["y"] for it in rows}) == 8
    plots.token_heatmap_figure([long], tmp_path / "rows.png", per_row=10)
    assert read_png(tmp_path / "rows.png").shape[0] > read_png(tmp_path / "tokens.png").shape[0] / 2
    with pytest.raises(ValueError, match="per_row"):
        plots.token_heatmap_figure([short], tmp_path / "bad.png", per_row=0)
    with pytest.raises(ValueError, match="titles"):
        plots.token_heatmap_figure([short], tmp_path / "bad.png", titles=["a", "b"])
    with pytest.raises(ValueError, match="must end in .png"):
        plots.token_heatmap_figure([short], tmp_path / "bad.jpg")
