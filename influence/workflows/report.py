"""A report of explanations: ``report.md`` beside a self-contained ``report.html``.

A :class:`Report` is a list of blocks (headings, paragraphs, tables, pictures,
preformatted text, token heatmaps). :meth:`Report.write` renders it twice into a folder: Markdown that
links the PNG files by relative path, and one HTML file with every picture embedded as a
``data:image/png;base64`` URI and its style inline — no scripts and no external
resources, so it opens from disk in any browser, offline, and can be mailed as one file.
Text is escaped; ```code``` spans in paragraphs become ``<code>``.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Report"]

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr.flag td { background: #fde2e2; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #e5e5e5; }
figcaption { font-size: 13px; color: #555; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 13px; }
code { background: #f2f2f2; padding: 0 3px; }
"""


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int


@dataclass(frozen=True)
class _Paragraph:
    text: str


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    highlight: tuple[bool, ...]
    caption: str


@dataclass(frozen=True)
class _Picture:
    path: Path
    caption: str


@dataclass(frozen=True)
class _Pre:
    text: str


@dataclass(frozen=True)
class _Tokens:
    heatmap: Any  # an influence.text.TokenHeatmap
    caption: str


def _inline_html(text: str) -> str:
    parts = re.split(r"(`[^`]+`)", text)
    return "".join(f"<code>{html.escape(p[1:-1])}</code>" if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p) for p in parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    """A report under construction; add blocks in order, then :meth:`write`."""

    title: str
    blocks: list[Any] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Report":
        if level not in (1, 2, 3, 4):
            raise ValueError(f"Report.heading: level must be 1..4 (got {level})")
        self.blocks.append(_Heading(str(text), level))
        return self

    def paragraph(self, text: str) -> "Report":
        self.blocks.append(_Paragraph(str(text)))
        return self

    def table(self, header: Sequence[Any], rows: Sequence[Sequence[Any]], *, caption: str = "", highlight: Sequence[bool] | None = None) -> "Report":
        """A table; ``highlight[i]`` marks row ``i`` (e.g. a flagged class)."""
        head = tuple(str(h) for h in header)
        body = tuple(tuple(str(c) for c in row) for row in rows)
        if any(len(r) != len(head) for r in body):
            raise ValueError(f"Report.table: every row must have {len(head)} cells")
        marks = tuple(bool(h) for h in highlight) if highlight is not None else (False,) * len(body)
        if len(marks) != len(body):
            raise ValueError("Report.table: highlight must have one entry per row")
        self.blocks.append(_Table(head, body, marks, str(caption)))
        return self

    def picture(self, path: str | os.PathLike[str], caption: str = "") -> "Report":
        """A PNG file (it must exist when the report is written)."""
        p = Path(path)
        if p.suffix.lower() != ".png":
            raise ValueError(f"Report.picture: only PNG files can be embedded (got {str(p)!r})")
        self.blocks.append(_Picture(p, str(caption)))
        return self

    def preformatted(self, text: str) -> "Report":
        self.blocks.append(_Pre(str(text)))
        return self

    def tokens(self, heatmap: Any, caption: str = "") -> "Report":
        """A sentence's tokens coloured by attribution (an
        :class:`influence.text.TokenHeatmap`): in HTML as coloured tokens (the value on
        hover), in Markdown as ``token +value`` text."""
        if not (hasattr(heatmap, "tokens") and hasattr(heatmap, "values") and callable(getattr(heatmap, "html", None))):
            raise TypeError(f"Report.tokens: expected a TokenHeatmap (got {type(heatmap).__name__})")
        self.blocks.append(_Tokens(heatmap, str(caption)))
        return self

    def to_markdown(self, folder: str | os.PathLike[str] = ".") -> str:
        """The report as Markdown; pictures are linked relative to ``folder``."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if isinstance(b, _Heading):
                out += ["#" * b.level + " " + b.text, ""]
            elif isinstance(b, _Paragraph):
                out += [b.text, ""]
            elif isinstance(b, _Table):
                if b.caption:
                    out += [f"*{b.caption}*", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                out.append("|" + "|".join("---" for _ in b.header) + "|")
                for row, mark in zip(b.rows, b.highlight):
                    cells = [_md_cell(c) for c in row]
                    if mark:
                        cells = [f"**{c}**" if c else c for c in cells]
                    out.append("| " + " | ".join(cells) + " |")
                out.append("")
            elif isinstance(b, _Picture):
                rel = Path(os.path.relpath(b.path.resolve(), Path(folder).resolve())).as_posix()
                out += [f"![{b.caption}]({rel})", ""]
                if b.caption:
                    out += [f"*{b.caption}*", ""]
            elif isinstance(b, _Pre):
                out += ["```", b.text, "```", ""]
            elif isinstance(b, _Tokens):
                text = ", ".join(f"`{t.replace('`', chr(39))}` {v:+.2g}" for t, v in zip(b.heatmap.tokens, b.heatmap.values))
                out += [f"{b.caption}: {text}" if b.caption else text, ""]
        return "\n".join(out)

    def to_html(self) -> str:
        """The report as one self-contained HTML page (pictures inlined as base64)."""
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for b in self.blocks:
            if isinstance(b, _Heading):
                out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
            elif isinstance(b, _Paragraph):
                out.append(f"<p>{_inline_html(b.text)}</p>")
            elif isinstance(b, _Table):
                out.append("<table>")
                if b.caption:
                    out.append(f"<caption>{html.escape(b.caption)}</caption>")
                out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header) + "</tr>")
                for row, mark in zip(b.rows, b.highlight):
                    cls = ' class="flag"' if mark else ""
                    out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
                out.append("</table>")
            elif isinstance(b, _Picture):
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                alt = html.escape(b.caption or b.path.name, quote=True)
                out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">')
                if b.caption:
                    out.append(f"<figcaption>{html.escape(b.caption)}</figcaption>")
                out.append("</figure>")
            elif isinstance(b, _Pre):
                out.append(f"<pre>{html.escape(b.text)}</pre>")
            elif isinstance(b, _Tokens):
                caption = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
                out.append(f"<figure>{b.heatmap.html()}{caption}</figure>")
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, folder: str | os.PathLike[str], name: str = "report") -> tuple[Path, Path]:
        """Write ``<folder>/<name>.html`` and ``<folder>/<name>.md``; return both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        html_path, md_path = folder / f"{name}.html", folder / f"{name}.md"
        html_path.write_text(self.to_html(), encoding="utf-8")
        md_path.write_text(self.to_markdown(folder), encoding="utf-8")
        return html_path, md_path
