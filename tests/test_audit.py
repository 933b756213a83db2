"""The region audit.

For a linear model ``f(x) = W·x + b`` integrated gradients from black is exactly ``W_c ⊙ x``
(any quadrature integrates a constant gradient exactly), so the per-pixel attribution is
``a_i = Σ_channels W_c ⊙ x_i`` and the audit has a closed form:

    s⁺_i = Σ_R max(a_i, 0) / Σ max(a_i, 0),   s_i = Σ_R |a_i| / Σ |a_i|,   r_i = |R_i| / (H·W),

per class the means with standard errors ``sd / √n``, and the flag ``mean s > factor · mean r``.
Regions given as a rectangle (top, left, height, width), a mask (H, W) or (N, H, W) (torch or
NumPy) or a callable are the same masks.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from doi import PointDoI
from influence import audit
from influence.workflows.audit import region_mask
from qoi import ComparativeQoI

C, H, W_ = 2, 6, 5


def linear_model(rng: torch.Generator, classes: int = 3) -> nn.Sequential:
    model = nn.Sequential(nn.Flatten(), nn.Linear(C * H * W_, classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, C * H * W_, generator=rng, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(classes, generator=rng, dtype=torch.float64))
    return model


def images(rng: torch.Generator, n_per_class: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n_per_class * classes, C, H, W_, generator=rng, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return x, y


def expected_rows(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, factor: float) -> dict[int, dict[str, float]]:
    weight = model[1].weight.detach().view(-1, C, H, W_)
    out = {}
    for c in torch.unique(y).tolist():
        a = (weight[c] * x[y == c]).sum(1)  # (n, H, W)
        m = mask[y == c]
        plus, mag = a.clamp_min(0), a.abs()
        sp = (plus * m).flatten(1).sum(1) / plus.flatten(1).sum(1)
        sa = (mag * m).flatten(1).sum(1) / mag.flatten(1).sum(1)
        area = m.flatten(1).double().mean(1)
        n = sp.shape[0]
        out[c] = {
            "positive_share": float(sp.mean()),
            "positive_stderr": float(sp.std() / n**0.5),
            "absolute_share": float(sa.mean()),
            "absolute_stderr": float(sa.std() / n**0.5),
            "area_share": float(area.mean()),
            "flagged": bool(sp.mean() > factor * area.mean()),
        }
    return out


def test_closed_form_for_a_linear_model(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x, y = images(rng)
    result = audit(model, (x, y), (1, 2, 3, 2), factor=1.5)
    mask = torch.zeros(len(x), H, W_, dtype=torch.bool)
    mask[:, 1:4, 2:4] = True
    expected = expected_rows(model, x, y, mask, 1.5)
    assert [r.label for r in result.rows] == [0, 1, 2]
    for row in result.rows:
        e = expected[row.label]
        assert row.n == 5
        for key in ("positive_share", "positive_stderr", "absolute_share", "absolute_stderr", "area_share"):
            assert getattr(row, key) == pytest.approx(e[key], rel=1e-10, abs=1e-12), key
        assert row.flagged == e["flagged"]
        assert row.area_share == pytest.approx(6 / 30)
        assert row.ratio == pytest.approx(row.positive_share / row.area_share)
    assert result.flagged == tuple(c for c in (0, 1, 2) if expected[c]["flagged"])
    weight = model[1].weight.detach().view(-1, C, H, W_)
    torch.testing.assert_close(result.maps, torch.cat([(weight[c] * x[y == c]).sum(1) for c in range(3)]))
    assert result.labels.tolist() == y.tolist() and result.index.tolist() == list(range(15))


def test_the_flag_follows_the_factor(rng: torch.Generator) -> None:
    """A class is flagged exactly when its share exceeds ``factor ×`` its area share."""
    model = linear_model(rng)
    x, y = images(rng)
    base = audit(model, (x, y), (0, 0, 3, 3), factor=1.0)
    for row in base.rows:
        just_below = row.positive_share / row.area_share * 0.999
        just_above = row.positive_share / row.area_share * 1.001
        assert audit(model, (x, y), (0, 0, 3, 3), factor=just_below, classes=row.label).rows[0].flagged
        assert not audit(model, (x, y), (0, 0, 3, 3), factor=just_above, classes=row.label).rows[0].flagged


def test_flag_on_absolute_share(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x, y = images(rng)
    result = audit(model, (x, y), (0, 0, 3, 3), factor=1.2, flag_on="absolute")
    for row in result.rows:
        assert row.flagged == (row.absolute_share > 1.2 * row.area_share)


def test_all_region_forms_give_the_same_masks(rng: torch.Generator) -> None:
    x, _ = images(rng)
    rect = region_mask((1, 2, 3, 2), x)
    full = torch.zeros(H, W_, dtype=torch.bool)
    full[1:4, 2:4] = True
    assert torch.equal(rect, full.expand(len(x), H, W_))
    assert torch.equal(region_mask(full, x), rect)
    assert torch.equal(region_mask(full.numpy(), x), rect)
    per_image = torch.rand(len(x), H, W_, generator=rng) > 0.5
    assert torch.equal(region_mask(per_image, x), per_image)
    assert torch.equal(region_mask(lambda t: t.amax(1) > 0.5, x), x.amax(1) > 0.5)


def test_per_image_masks_and_callables_in_the_audit(rng: torch.Generator) -> None:
    """A callable region is evaluated on the images; each image has its own mask."""
    model = linear_model(rng)
    x, y = images(rng)
    region = lambda t: t[:, 0] > 0.5  # noqa: E731
    result = audit(model, (x, y), region, factor=2.0)
    expected = expected_rows(model, x, y, x[:, 0] > 0.5, 2.0)
    for row in result.rows:
        assert row.positive_share == pytest.approx(expected[row.label]["positive_share"], rel=1e-10)
        assert row.area_share == pytest.approx(expected[row.label]["area_share"], rel=1e-12)
    assert torch.equal(result.masks, x[:, 0] > 0.5)
    assert result.region.startswith("callable")


def test_options_each_qoi_classes(rng: torch.Generator) -> None:
    """``each=PointDoI()`` (gradient × input) equals IG on a linear model; ``qoi=`` picks the
    explained quantity per class; ``classes`` restricts the rows."""
    model = linear_model(rng)
    x, y = images(rng)
    ig = audit(model, (x, y), (0, 0, 2, 2))
    gxi = audit(model, (x, y), (0, 0, 2, 2), each=PointDoI())
    torch.testing.assert_close(ig.maps, gxi.maps)
    contrast = audit(model, {"x": x, "y": y}, (0, 0, 2, 2), classes=[2, 0], qoi=lambda c: ComparativeQoI(c, 1))
    assert [r.label for r in contrast.rows] == [2, 0]
    weight = model[1].weight.detach().view(-1, C, H, W_)
    torch.testing.assert_close(contrast.maps[:5], ((weight[2] - weight[1]) * x[y == 2]).sum(1))


def test_images_without_channels(rng: torch.Generator) -> None:
    """``(N, H, W)`` inputs: the attribution is already per pixel."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * W_, 2)).double()
    x = torch.rand(6, H, W_, generator=rng, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    result = audit(model, (x, y), (0, 0, H, 1))
    torch.testing.assert_close(result.maps[:3], model[1].weight.detach()[0].view(H, W_) * x[:3])


def test_table_and_json(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x, y = images(rng)
    result = audit(model, (x, y), (1, 2, 3, 2), factor=1.5)
    loaded = json.loads(result.to_json())
    assert loaded["factor"] == 1.5 and loaded["flagged"] == list(result.flagged)
    assert [r["label"] for r in loaded["rows"]] == [0, 1, 2]
    assert loaded["rows"][1]["positive_share"] == result.row(1).positive_share
    assert loaded["region"] == "rectangle(top=1, left=2, height=3, width=2)"
    table = result.to_table().splitlines()
    assert len(table) == 3 + 3 and "positive share" in table[2]
    for line, row in zip(table[3:], result.rows):
        assert line.split()[0] == str(row.label) and (line.endswith("FLAG") == row.flagged)


def test_errors(rng: torch.Generator) -> None:
    model = linear_model(rng)
    x, y = images(rng)
    with pytest.raises(ValueError, match="does not fit images of 6x5"):
        audit(model, (x, y), (4, 0, 3, 1))
    with pytest.raises(TypeError, match=r"four ints \(top, left, height, width\)"):
        audit(model, (x, y), (0, 0, 2))
    with pytest.raises(TypeError, match="must be a bool mask"):
        audit(model, (x, y), torch.ones(H, W_))
    with pytest.raises(ValueError, match=r"expected \(6, 5\) or \(15, 6, 5\)"):
        audit(model, (x, y), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="factor must be a number > 0"):
        audit(model, (x, y), (0, 0, 1, 1), factor=0)
    with pytest.raises(ValueError, match=r"classes \[7\] not in the data's labels"):
        audit(model, (x, y), (0, 0, 1, 1), classes=7)
    with pytest.raises(ValueError, match="flag_on must be one of"):
        audit(model, (x, y), (0, 0, 1, 1), flag_on="negative")
    with pytest.raises(ValueError, match="images must be"):
        audit(model, (x.flatten(1), y), (0, 0, 1, 1))
