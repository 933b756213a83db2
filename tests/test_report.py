"""The report: ``report.html`` is self-contained (no http(s) reference, no script, no external
stylesheet; every picture is a ``data:image/png;base64`` URI whose bytes are the PNG file's),
text is escaped, and ``report.md`` links the PNGs by relative paths that exist.

Where Chromium is installed (``/usr/bin/chromium``, not on CI) the page is also rendered
headless, from disk, and the screenshot must show the embedded picture: a block of its
pure colour. The structural checks run everywhere."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread, imsave

from influence import Report

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None) or shutil.which("chromium")


def make_report(tmp_path: Path) -> tuple[Report, Path]:
    pictures = tmp_path / "pics"
    pictures.mkdir()
    png = pictures / "green.png"
    block = np.zeros((120, 200, 3))
    block[..., 1] = 1.0  # pure green: easy to find in a screenshot
    imsave(png, block)
    report = Report("A <test> report")
    report.paragraph("Plain text with `code` and <b>not bold</b> & an ampersand.")
    report.heading("Numbers")
    report.table(["class", "share"], [[3, "0.744"], [8, "0.001"]], highlight=[True, False], caption="shares | pipes")
    report.picture(png, "a green block")
    report.preformatted("line 1\n  <line 2>")
    return report, png


def test_html_is_self_contained(tmp_path: Path) -> None:
    report, png = make_report(tmp_path)
    html_path, md_path = report.write(tmp_path / "out")
    assert html_path == tmp_path / "out" / "report.html" and md_path == tmp_path / "out" / "report.md"
    html = html_path.read_text(encoding="utf-8")
    assert not re.search(r"https?:", html, flags=re.I)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 1
    (src,) = sources
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == png.read_bytes()
    # escaping: the user's text never becomes markup
    assert "<test>" not in html and "&lt;test&gt;" in html
    assert "<b>not bold</b>" not in html and "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert "<code>code</code>" in html
    assert "&lt;line 2&gt;" in html
    assert '<tr class="flag"><td>3</td><td>0.744</td></tr>' in html
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


def test_markdown_links_the_pictures(tmp_path: Path) -> None:
    report, png = make_report(tmp_path)
    _, md_path = report.write(tmp_path / "out")
    md = md_path.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["../pics/green.png"]
    assert (md_path.parent / links[0]).resolve() == png.resolve()
    assert "| **3** | **0.744** |" in md and "| 8 | 0.001 |" in md
    assert md.startswith("# A <test> report")
    assert "*shares | pipes*" in md


def test_bad_blocks_are_refused(tmp_path: Path) -> None:
    report = Report("r")
    with pytest.raises(ValueError, match="only PNG"):
        report.picture(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="every row must have 2 cells"):
        report.table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="level must be 1..4"):
        report.heading("h", 7)


def test_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Structure always; the rendering only where Chromium exists (CI has none)."""
    report, _ = make_report(tmp_path)
    html_path, _ = report.write(tmp_path / "out")
    assert html_path.stat().st_size > 1000
    if CHROMIUM is None:
        return
    shot = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        html_path.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert float(pixels.var()) > 1e-4  # not blank
    green = (pixels[..., 1] > 0.9) & (pixels[..., 0] < 0.1) & (pixels[..., 2] < 0.1)
    assert green.sum() >= 0.9 * 120 * 200  # the embedded picture is on the page


def test_token_heatmaps_in_both_renderings() -> None:
    """A token heatmap is coloured tokens in the HTML (escaped, full red for the largest
    value) and ``token +value`` text in the Markdown; anything else is refused."""
    from influence.text import TokenHeatmap

    rep = Report("tokens").tokens(TokenHeatmap(("<b>", "zq", "ok"), (0.0, 2.0, -1.0)), "row 3")
    page, text = rep.to_html(), rep.to_markdown()
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1]
    assert re.search(r'background-color: rgb\(255, 0, 0\)[^>]*>zq<', page) and "<figcaption>row 3</figcaption>" in page
    assert "row 3: `<b>` +0, `zq` +2, `ok` -1" in text
    with pytest.raises(TypeError, match="Report.tokens: expected a TokenHeatmap"):
        rep.tokens("zq")
