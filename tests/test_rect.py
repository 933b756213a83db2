"""One rectangle convention, ``(top, left, height, width)`` in pixels (torchvision's
``crop`` order): ``Rect`` and plain tuples in Python, ``box: {top, left, height, width}``
in query files; the former YAML list ``[top, bottom, left, right]`` reads with a warning
that spells the new form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from influence import Rect
from influence.query import QueryError, parse_query
from influence.synthetic import cue_box
from influence.workflows.regions import region_mask


def test_a_rect_covers_its_rows_and_columns_half_open() -> None:
    rect = Rect(top=1, left=2, height=3, width=4)
    mask = rect.mask(6, 7)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (1, 3, 2, 5)
    assert int(mask.sum()) == 3 * 4
    assert Rect.from_corners(top=1, bottom=4, left=2, right=6) == rect
    assert rect.fits(4, 6) and not rect.fits(3, 6) and not rect.fits(4, 5)
    assert not Rect(0, 0, 0, 2).fits(5, 5)


def test_python_takes_a_rect_or_the_plain_tuple_in_the_same_order() -> None:
    x = torch.zeros(2, 3, 8, 9)
    rect = Rect(2, 1, 3, 5)
    expected = torch.zeros(8, 9, dtype=torch.bool)
    expected[2:5, 1:6] = True
    assert torch.equal(region_mask(rect, x), expected.expand(2, 8, 9))
    assert torch.equal(region_mask(tuple(rect), x), region_mask(rect, x))
    with pytest.raises(ValueError, match=r"rectangle \(top=2, left=1, height=7, width=5\) does not fit images of 8x9"):
        region_mask(Rect(2, 1, 7, 5), x)


def test_the_demo_cue_box_is_a_rect() -> None:
    box = cue_box(16)
    assert isinstance(box, Rect) and box.top == 0 and box.left == 0 and box.height == box.width == 16 // 8 + 1


def _doc(box: Any) -> dict[str, Any]:
    return {
        "model": {"factory": "influence.synthetic:trained_cnn"},
        "data": {"factory": "influence.synthetic:glyph_images", "labels": "y"},
        "queries": [{"doi": {"kind": "class", "label": 3}, "qoi": {"kind": "class", "label": 3}, "output": {"regions": {"r": {"box": box}}}}],
    }


def _box(document: dict[str, Any], tmp_path: Path) -> dict[str, int]:
    return parse_query(document, tmp_path).queries[0].output["regions"]["r"]["box"]


def test_yaml_box_is_top_left_height_width(tmp_path: Path) -> None:
    assert _box(_doc({"top": 1, "left": 2, "height": 3, "width": 4}), tmp_path) == {"top": 1, "left": 2, "height": 3, "width": 4}


def test_the_query_as_run_reads_back_the_same(tmp_path: Path) -> None:
    """The echo written next to a result (``QuerySpec.echo``) is itself a valid query with the same box."""
    spec = parse_query(_doc({"top": 1, "left": 2, "height": 3, "width": 4}), tmp_path).queries[0]
    again = parse_query({**_doc(None), "queries": [spec.echo()]}, tmp_path).queries[0]
    assert again.output["regions"] == spec.output["regions"]


def test_the_former_list_reads_with_a_warning_that_spells_the_new_form(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match=r"queries\[0\]\.output\.regions\.r\.box: the list \[top, bottom, left, right\] is deprecated; write \{top: 1, left: 2, height: 3, width: 4\}"):
        old = _box(_doc([1, 4, 2, 6]), tmp_path)
    assert old == _box(_doc({"top": 1, "left": 2, "height": 3, "width": 4}), tmp_path)


@pytest.mark.parametrize(
    "box, path, message",
    [
        ({"top": 0, "left": 0, "height": 3}, "queries[0].output.regions.r.box.width", "missing"),
        ({"top": 0, "left": 0, "bottom": 3, "width": 3}, "queries[0].output.regions.r.box.bottom", "height"),
        ({"top": 0, "left": 0, "height": 0, "width": 3}, "queries[0].output.regions.r.box.height", "an int >= 1"),
        ({"top": -1, "left": 0, "height": 1, "width": 3}, "queries[0].output.regions.r.box.top", "an int >= 0"),
        ("corner", "queries[0].output.regions.r.box", "{top, left, height, width}"),
        ([3, 1, 0, 2], "queries[0].output.regions.r.box", "top < bottom"),
    ],
)
def test_a_bad_box_names_its_field(box: Any, path: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(_doc(box), tmp_path)
    assert info.value.path == path and message in info.value.message, str(info.value)
