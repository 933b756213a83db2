"""The generated data and model of ``influence.synthetic``: what the examples, the demo
and the background audit rely on.

* ``glyph_images`` is deterministic; each image is its class's glyph (the same in every
  split and seed) shifted by at most 2 pixels, white on noise in [0, 0.1); the spurious
  cue is exactly ``cue_strength`` added to the red channel of the cue box's background
  pixels, on training images of the cue class only.
* ``small_cnn`` has the documented layer names and shapes and is fx-traceable.
* ``trained_cnn`` is deterministic, cached yet fresh per call, and accurate on the test
  split; trained with the cue it has learned the shortcut.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

from influence.synthetic import accuracy, cue_box, glyph, glyph_images, small_cnn, trained_cnn
from slices import Slice


@pytest.fixture(scope="module")
def clean() -> torch.nn.Module:
    return trained_cnn(seed=0)


@pytest.fixture(scope="module")
def test_set() -> dict[str, torch.Tensor]:
    return glyph_images(split="test", n_per_class=50)


def test_shapes_and_types() -> None:
    d = glyph_images(n_per_class=3, classes=4, size=16)
    assert set(d) == {"x", "y", "foreground"}
    assert d["x"].shape == (12, 3, 16, 16) and d["x"].dtype == torch.float32
    assert d["y"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] and d["y"].dtype == torch.int64
    assert d["foreground"].shape == (12, 16, 16) and d["foreground"].dtype == torch.bool


def test_deterministic_and_splits_differ() -> None:
    a, b = glyph_images(n_per_class=5, seed=3), glyph_images(n_per_class=5, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    test = glyph_images(n_per_class=5, seed=3, split="test")
    other = glyph_images(n_per_class=5, seed=4)
    assert not torch.equal(a["x"], test["x"]) and not torch.equal(a["x"], other["x"])


@pytest.mark.parametrize("split, seed", [("train", 0), ("test", 0), ("train", 5)])
def test_images_are_shifted_glyphs_on_faint_noise(split: str, seed: int) -> None:
    """``foreground[i] = roll(glyph(y_i), (dr, dc))`` with ``|dr|, |dc| <= 2``; the image
    is 1 on the foreground (all channels) and in [0, 0.1) elsewhere."""
    d = glyph_images(n_per_class=6, split=split, seed=seed)
    shifts = [(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)]
    for x, y, fg in zip(d["x"], d["y"], d["foreground"]):
        g = glyph(int(y))
        assert any(torch.equal(torch.roll(g, s, dims=(0, 1)), fg) for s in shifts)
        assert bool((x[:, fg] == 1).all())
        background = x[:, ~fg]
        assert bool((background >= 0).all() and (background < 0.1).all())


def test_glyphs_are_distinct_and_central() -> None:
    """Ten different glyphs, each inside the central square [4, 12)² of a 16×16 image."""
    glyphs = [glyph(c) for c in range(10)]
    assert len({tuple(g.flatten().tolist()) for g in glyphs}) == 10
    for g in glyphs:
        rows, cols = torch.nonzero(g, as_tuple=True)
        assert int(rows.min()) >= 4 and int(rows.max()) < 12 and int(cols.min()) >= 4 and int(cols.max()) < 12
        assert int(g.sum()) >= 10


def test_cue_only_on_training_images_of_the_cue_class() -> None:
    """With ``cue_class=c`` the training split differs from the plain one exactly by
    ``cue_strength`` on the red channel of class c's background pixels in ``cue_box``; the
    test split is unchanged."""
    plain = glyph_images(n_per_class=8, classes=5)
    cued = glyph_images(n_per_class=8, classes=5, cue_class=2, cue_strength=0.7)
    top, left, height, width = cue_box(16)  # the library's one convention: (top, left, height, width)
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[top : top + height, left : left + width] = True
    expected = plain["x"].clone()
    where = (plain["y"] == 2)[:, None, None] & box & ~plain["foreground"]
    expected[:, 0] += 0.7 * where
    assert torch.equal(cued["x"], expected)
    assert int(where.sum()) > 0
    assert torch.equal(cued["foreground"], plain["foreground"]) and torch.equal(cued["y"], plain["y"])
    test_plain = glyph_images(n_per_class=8, classes=5, split="test")
    test_cued = glyph_images(n_per_class=8, classes=5, split="test", cue_class=2)
    assert torch.equal(test_cued["x"], test_plain["x"])


@pytest.mark.parametrize(
    "kwargs, error",
    [({"split": "val"}, ValueError), ({"cue_class": 10}, ValueError), ({"n_per_class": 0}, ValueError), ({"size": 4}, ValueError), ({"classes": 2.5}, TypeError)],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error, match="glyph_images: " + next(iter(kwargs))):
        glyph_images(**kwargs)  # type: ignore[arg-type]


def test_small_cnn_layers_and_shapes() -> None:
    """The documented layer names and unit shapes; fx traces it, so slices split the
    graph (no hooks needed)."""
    model = small_cnn(classes=10, width=8)
    names = [n for n, _ in model.named_children()]
    assert names == ["conv1", "relu1", "conv2", "relu2", "pool", "res", "gap", "flatten", "fc"]
    x = torch.rand(2, 3, 16, 16)
    shapes = {"relu1": (8, 16, 16), "relu2": (16, 16, 16), "pool": (16, 8, 8), "res": (16, 8, 8), "gap": (16, 2, 2), "flatten": (64,)}
    for layer, shape in shapes.items():
        slc = Slice(model, layer)
        assert slc.realisation == "graph"
        assert tuple(slc.h(x).shape[1:]) == shape
    fx.symbolic_trace(model)
    assert model(x).shape == (2, 10)
    assert torch.equal(small_cnn(seed=1).conv1.weight, small_cnn(seed=1).conv1.weight)


def test_small_cnn_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    small_cnn(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_trained_cnn_is_accurate(clean: torch.nn.Module, test_set: dict[str, torch.Tensor]) -> None:
    """Above 95 % on the test split (500 images it never saw)."""
    assert not clean.training
    assert accuracy(clean, test_set["x"], test_set["y"]) > 0.95


def test_trained_cnn_is_deterministic_and_fresh(clean: torch.nn.Module) -> None:
    """The same weights on every call (cached), but each call a new model: changing one
    leaves the next untouched."""
    again = trained_cnn(seed=0)
    assert again is not clean
    assert all(torch.equal(a, b) for a, b in zip(clean.state_dict().values(), again.state_dict().values()))
    with torch.no_grad():
        again.fc.weight.zero_()
    assert not torch.equal(trained_cnn(seed=0).fc.weight, again.fc.weight)


def test_cue_model_learns_the_shortcut(test_set: dict[str, torch.Tensor]) -> None:
    """Trained with the cue on class 3, the model calls many test images of *other*
    classes 3 once the cue is pasted on them (over 30 %); the clean model, for which the
    patch is merely unusual, several times fewer."""
    cued = trained_cnn(seed=0, cue_class=3)
    x, y, fg = test_set["x"].clone(), test_set["y"], test_set["foreground"]
    top, left, height, width = cue_box(16)
    rows, cols = slice(top, top + height), slice(left, left + width)
    x[:, 0, rows, cols] += 1.0 * ~fg[:, rows, cols]
    others = y != 3
    with torch.no_grad():
        flipped = float((cued(x[others]).argmax(1) == 3).double().mean())
        flipped_clean = float((trained_cnn(seed=0)(x[others]).argmax(1) == 3).double().mean())
    assert flipped > 0.3 and flipped > 3 * flipped_clean
