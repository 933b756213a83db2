"""What a query's ``output`` section asks for beyond the top-k table: the analyses
(``audit``, ``essence``, ``curves``), the pictures (``plots``) and the report
(``report``), run by ``influence run`` after each query.

* ``audit`` — :func:`influence.audit` on the data section with the query's pointwise DoI
  (or a population DoI's ``each``) and ``multiply_activation``; each image's own class
  ``ClassQoI(y)`` is explained. With ``tokens: [IDS]`` instead of ``region`` (text, a
  query at the word embeddings): :func:`influence.text.token_audit` with the query's line
  (its ``{token: ID, keep: [IDS]}`` baseline and steps).
* ``essence`` — :func:`influence.essence_check` at the query's slice for its QoI
  (``comparative`` a vs b, or ``class`` c vs the rest) on the data section.
* ``curves`` — :func:`influence.deletion_insertion` of each result's attributions on the
  query's inputs, scored by the query's own QoI (for ``max_class``: the logit of the class
  predicted on the unaltered image).
* ``plots`` — ``heatmaps`` (input queries: the attributions over the images),
  ``neuron_grid`` (layer queries: what the top units or channels see, integrated gradients
  of each from black), ``contrast`` (the top-k table as bars with ±3 standard errors),
  ``audit_bars``, ``curves``, ``essence``, ``tokens`` (text queries at an embedding: the
  first explained sentences' token heatmaps, ``<name>.tokens.png`` and a page of coloured
  tokens ``<name>.tokens.html``); ``true`` draws every one that applies.
  Files: ``<out>/<name>.<picture>.png`` (``<name>.<j>.<picture>.png`` for the j-th QoI).
* ``report`` — the query's tables and pictures go into ``<out>/report.html`` (self-contained)
  and ``<out>/report.md``, one report for the whole file; a text query's token heatmaps
  go into the HTML as coloured tokens (into the Markdown as text).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from doi import PointwiseDoI
from qoi import ClassQoI, ComparativeQoI, MaxClassQoI

from ..engine import InfluenceResult
from ..workflows import (
    AuditResult, Curves, EssenceResult, Rect, Report, audit, deletion_insertion, essence_check, explain_neurons, pixel_maps,
)  # fmt: skip
from .checks import QueryError, join_path
from .running import BuiltQuery
from .summaries import is_token_result, top_table

_MAX_HEATMAPS = 12
_MAX_NEURONS = 4


def _wants(output: dict[str, Any], kind: str) -> bool:
    plots = output["plots"]
    return plots is True or (isinstance(plots, list) and kind in plots)


def _explicit(output: dict[str, Any], kind: str) -> bool:
    return isinstance(output["plots"], list) and kind in output["plots"]


class Extras:
    """Runs the extra outputs of every query of a file, and writes the report at the end."""

    def __init__(self, out_dir: Path, source: str) -> None:
        self.out_dir = out_dir
        self.report = Report(f"influence report: {source}")
        self.reported = 0

    def check(self, built: list[BuiltQuery]) -> None:
        """Fail before anything runs if pictures are asked for and matplotlib is missing."""
        for query in built:
            output = query.spec.output
            if output["plots"] or output["report"]:
                from ..workflows import plots

                plots._matplotlib()
                return

    def run(self, query: BuiltQuery, results: list[InfluenceResult]) -> tuple[dict[str, Any], list[Path], str]:
        """The analyses (JSON-ready), the files written, and text to print."""
        output = query.spec.output
        analyses: dict[str, Any] = {}
        texts: list[str] = []
        pictures: list[tuple[Path, str]] = []
        batch = query.options.get("batch_size", 64)
        batch = 64 if not isinstance(batch, int) else batch
        seed = query.options.get("seed")
        seed = int(results[0].query.get("seed", 0)) if seed is None else seed
        model = query.slice.model
        assert model is not None
        audited: AuditResult | None = None
        essence: EssenceResult | None = None
        curves: list[Curves] = []
        if output["audit"] is not None:
            audited = self._audit(query, batch, seed)
            analyses["audit"] = audited.to_dict()
            texts.append(audited.to_table())
        if output["essence"] is not None:
            essence = self._essence(query, batch, seed)
            analyses["essence"] = essence.to_dict()
            texts.append(essence.to_table())
        if output["curves"] is not None:
            curves = self._curves(query, results, batch, seed)
            analyses["curves"] = [c.to_dict() for c in curves]
            texts += [c.to_table() for c in curves]
        if output["plots"]:
            pictures = self._pictures(query, results, audited, essence, curves, batch, seed)
        heatmaps = self._token_heatmaps(query, results) if output["report"] or _wants(output, "tokens") else []
        written: list[Path] = []
        if _wants(output, "tokens"):
            if not any(heatmaps) and _explicit(output, "tokens"):
                raise QueryError(
                    join_path(query.spec.path, "output.plots"),
                    "tokens draws one value per token: it needs integer token ids as inputs and a slice with one vector per token (units (L, D)), e.g. the word embeddings",
                )
            written += self._token_files(query, results, heatmaps)
        if output["report"]:
            self._add_to_report(query, results, texts, pictures, heatmaps)
        return analyses, [*(p for p, _ in pictures), *written], "\n".join(texts)

    def finish(self) -> list[Path]:
        if not self.reported:
            return []
        return list(self.report.write(self.out_dir))

    # --- analyses ------------------------------------------------------------------------------

    def _labelled(self, query: BuiltQuery, where: str) -> tuple[Tensor, Tensor]:
        if query.data.y is None:
            raise QueryError(where, "needs labels, but the data has none")
        return query.data.x, query.data.y

    def _each(self, query: BuiltQuery) -> PointwiseDoI:
        return query.doi if isinstance(query.doi, PointwiseDoI) else query.doi.each

    def _token_audit(self, query: BuiltQuery, batch: int, seed: int) -> AuditResult:
        from ..workflows import token_audit

        spec = query.spec.output["audit"]
        where = join_path(query.spec.path, "output.audit")
        x, y = self._labelled(query, where)
        line = query.spec.doi if query.spec.pointwise else query.spec.doi["each"]
        base = line["baseline"]
        steps = {"steps": line["steps"]} if line.get("tol") is None else {"steps": None, "tol": line["tol"]}  # the query's steps, or its tol
        try:
            return token_audit(
                query.slice.model, (x, y), spec["tokens"], embedding=query.slice.layer, baseline=base["token"], keep=base["keep"],
                factor=spec["factor"], classes=spec["classes"], flag_on=spec["flag_on"], batch_size=batch, seed=seed, **steps,
            )  # fmt: skip
        except (ValueError, TypeError) as e:
            raise QueryError(where, str(e)) from None

    def _audit(self, query: BuiltQuery, batch: int, seed: int) -> AuditResult:
        spec = query.spec.output["audit"]
        where = join_path(query.spec.path, "output.audit")
        if spec.get("tokens") is not None:
            return self._token_audit(query, batch, seed)
        x, y = self._labelled(query, where)
        region_spec = spec["region"]
        region: Any
        if region_spec["box"] is not None:
            rect = Rect(**region_spec["box"])
            h, w = x.shape[-2:]
            if not rect.fits(h, w):
                raise QueryError(join_path(where, "region.box"), f"{rect} does not fit images of {h}x{w} pixels")
            region = ~rect.mask(h, w) if region_spec["invert"] else rect
        else:
            mask = query.data.array(region_spec["mask"], join_path(where, "region.mask"))
            if mask.dtype != torch.bool:
                raise QueryError(join_path(where, "region.mask"), f"array {region_spec['mask']!r} must be bool (got {mask.dtype})")
            region = ~mask if region_spec["invert"] else mask
        try:
            return audit(
                query.slice.model, (x, y), region, factor=spec["factor"], classes=spec["classes"], each=self._each(query),
                multiply_activation=query.options["multiply_activation"], flag_on=spec["flag_on"], batch_size=batch, seed=seed,
            )
        except (ValueError, TypeError) as e:
            raise QueryError(where, str(e)) from None

    def _essence(self, query: BuiltQuery, batch: int, seed: int) -> EssenceResult:
        spec = query.spec.output["essence"]
        where = join_path(query.spec.path, "output.essence")
        x, y = self._labelled(query, where)
        qoi = query.qoi
        if isinstance(qoi, ComparativeQoI):
            a, b = qoi.a, qoi.b
        elif isinstance(qoi, ClassQoI):
            a, b = qoi.c, None
        else:
            raise QueryError(where, f"needs a class or comparative QoI (got {qoi!r})")
        try:
            return essence_check(
                query.slice, (x, y), a, b, qoi=qoi, ks=spec["k"], rankings=spec["rankings"], ablation=spec["ablation"],
                by=spec["by"] or query.spec.output["top"]["by"], draws=spec["draws"], batch_size=max(batch, 256), seed=seed,
            )
        except (ValueError, TypeError) as e:
            raise QueryError(where, str(e)) from None

    def _curves(self, query: BuiltQuery, results: list[InfluenceResult], batch: int, seed: int) -> list[Curves]:
        spec = query.spec.output["curves"]
        where = join_path(query.spec.path, "output.curves")
        x = query.inputs
        assert x is not None
        if x.ndim not in (3, 4):
            raise QueryError(where, f"needs image inputs (N, C, H, W) or (N, H, W) (got {tuple(x.shape)})")
        model = query.slice.model
        assert model is not None
        out = []
        for qoi, result in zip(query.qois, results):
            if qoi.layers:
                raise QueryError(where, f"scores images by the model's output; {qoi!r} reads a layer")
            if isinstance(qoi, MaxClassQoI):
                with torch.no_grad():
                    target = model(x.to(next(model.parameters()).dtype)).argmax(1).cpu()
                score: Any = "logit"
            else:
                target, score = torch.zeros(x.shape[0], dtype=torch.long), (lambda output, q=qoi: q(output))
            try:
                out.append(
                    deletion_insertion(
                        model, x, result.values, target, steps=spec["steps"], baseline=spec["baseline"], score=score,
                        random_orders=spec["random_orders"], batch_size=max(batch, 256), seed=seed,
                    )
                )
            except (ValueError, TypeError) as e:
                raise QueryError(where, str(e)) from None
        return out

    # --- pictures ------------------------------------------------------------------------------

    def _pictures(
        self, query: BuiltQuery, results: list[InfluenceResult], audited: AuditResult | None, essence: EssenceResult | None,
        curves: list[Curves], batch: int, seed: int,
    ) -> list[tuple[Path, str]]:
        from ..workflows import plots

        spec, output = query.spec, query.spec.output
        where = join_path(spec.path, "output.plots")
        files: list[tuple[Path, str]] = []

        def path(kind: str, j: int | None = None) -> Path:
            return self.out_dir / (f"{spec.name}.{kind}.png" if j is None or len(results) == 1 else f"{spec.name}.{j}.{kind}.png")

        for j, result in enumerate(results):
            qname = result.query.get("qoi")
            if _wants(output, "heatmaps") and query.slice.is_input:
                unit = result.unit_shape
                if len(unit) in (2, 3):
                    if result.pooled:
                        maps, images, titles = pixel_maps(result.values[None], len(unit) + 1), None, [f"pooled over {result.anchors} points"]
                    else:
                        n = min(result.values.shape[0], _MAX_HEATMAPS)
                        maps, images = pixel_maps(result.values[:n], len(unit) + 1), query.inputs[:n] if query.inputs is not None else None
                        titles = [f"row {int(r)}" for r in query.rows[:n]]
                    files.append((plots.plot_heatmaps(path("heatmaps", j), images, maps, titles=titles), f"{spec.name}: {qname}, attributions"))
                elif _explicit(output, "heatmaps"):
                    raise QueryError(where, f"heatmaps need image-shaped inputs (C, H, W) or (H, W) (got {unit})")
            if _wants(output, "contrast"):
                rows = top_table(result, output["top"])
                files.append(
                    (
                        plots.plot_contrast(
                            path("contrast", j), [str(tuple(r["index"])) if isinstance(r["index"], list) else str(r["index"]) for r in rows],
                            [r["value"] for r in rows], [r["stderr"] for r in rows], title=f"{spec.name}: top {output['top']['by']}s for {qname}",
                        ),
                        f"{spec.name}: top {len(rows)} {output['top']['by']}s with ±3 standard errors",
                    )
                )
            if _wants(output, "neuron_grid") and not query.slice.is_input:
                files.append(self._neuron_grid(query, result, path("neuron_grid", j), batch, seed))
        if audited is not None and _wants(output, "audit_bars"):
            drawn = plots.plot_audit_bars(path("audit_bars"), **plots.audit_arrays(audited))
            files.append((drawn, f"{spec.name}: share of positive attribution in the region per class (hatched: flagged)"))
        if essence is not None and _wants(output, "essence"):
            files.append((plots.plot_essence(path("essence"), **plots.essence_arrays(essence)), f"{spec.name}: top-k AUC against random units"))
        if curves and _wants(output, "curves"):
            for j, c in enumerate(curves):
                files.append((plots.plot_curves(path("curves", j), **plots.curves_arrays(c)), f"{spec.name}: deletion and insertion curves"))
        return files

    def _neuron_grid(self, query: BuiltQuery, result: InfluenceResult, path: Path, batch: int, seed: int) -> tuple[Path, str]:
        from ..workflows import plots

        spec = query.spec
        where = join_path(spec.path, "output.plots")
        cut = query.slice.cut
        if cut is None or cut.at != "output":
            raise QueryError(where, "neuron_grid needs a slice at a layer's output")
        rows = top_table(result, spec.output["top"])[:_MAX_NEURONS]
        units = [tuple(r["index"]) if isinstance(r["index"], list) else r["index"] for r in rows]
        x = query.data.x
        y = query.data.y if query.data.y is not None else torch.zeros(x.shape[0], dtype=torch.long)
        over = spec.doi["label"] if spec.doi["kind"] == "class" else None
        views = explain_neurons(query.slice.model, cut.layer, units, (x, y), over=over, batch_size=batch, seed=seed)
        drawn = plots.plot_neuron_grid(path, **plots.neuron_arrays(views, "pooled" if over is None else f"pooled over class {over}"))
        return drawn, f"{spec.name}: what the top {len(views)} units see (integrated gradients from black)"

    # --- token heatmaps ---------------------------------------------------------------------------

    def _token_heatmaps(self, query: BuiltQuery, results: list[InfluenceResult]) -> list[list[Any]]:
        """Per result, the token heatmaps of its first sentences (``[]`` for a result that
        is not one value per token)."""
        from ..workflows import token_heatmaps

        out: list[list[Any]] = []
        data = query.data
        for result in results:
            if not is_token_result(query, result):
                out.append([])
                continue
            n = min(result.values.shape[0], _MAX_HEATMAPS)
            rows = query.rows[:n].tolist()
            mask = data.mask[query.rows[:n]] if data.mask is not None else None
            first = InfluenceResult(values=result.values[:n], stderr=result.stderr[:n], samples=result.samples, anchors=n, pooled=False, query=result.query)
            out.append(token_heatmaps(first, [data.token_strings(r) for r in rows], mask))
        return out

    def _token_files(self, query: BuiltQuery, results: list[InfluenceResult], heatmaps: list[list[Any]]) -> list[Path]:
        """``<name>.tokens.html`` and ``<name>.tokens.png`` (``<name>.<j>.tokens.*`` per
        QoI): the heatmaps as a page of coloured tokens and as a picture. (The report
        shows them as HTML, not as the picture.)"""
        from ..workflows import plots

        spec = query.spec
        files = []
        for j, (result, maps) in enumerate(zip(results, heatmaps)):
            if not maps:
                continue
            stem = spec.name if len(results) == 1 else f"{spec.name}.{j}"
            titles = [f"row {int(r)}" for r in query.rows[: len(maps)]]
            body = "".join(f"<h3>{html.escape(t)}</h3>{m.html()}" for t, m in zip(titles, maps))
            title = html.escape(f"{spec.name}: {result.query.get('qoi')}, token attributions")
            page = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>\n'
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"{stem}.tokens.html"
            path.write_text(page, encoding="utf-8")
            files.append(path)
            files.append(plots.token_heatmap_figure(maps, self.out_dir / f"{stem}.tokens.png", titles=titles))
        return files

    # --- report ----------------------------------------------------------------------------------

    def _add_to_report(
        self, query: BuiltQuery, results: list[InfluenceResult], texts: list[str], pictures: list[tuple[Path, str]], heatmaps: list[list[Any]] | None = None
    ) -> None:
        spec = query.spec
        rep = self.report
        rep.heading(spec.name)
        for j, result in enumerate(results):
            rep.paragraph(
                f"`{result.query.get('qoi')}` at {('layer `' + str(result.query.get('layer')) + '`') if result.query.get('layer') else 'the input'}, "
                f"`{result.query.get('doi')}`, {result.anchors} points, {result.samples} samples, seed {result.query.get('seed')}"
                + (
                    f"; steps per point chosen to meet tol: mean {float(result.steps.double().mean()):.1f}, max {int(result.steps.max())}, "
                    f"{result.query.get('tol_missed', 0)} missed tol."
                    if result.steps is not None and result.steps.numel()
                    else "."
                )
            )
            rows = top_table(result, spec.output["top"])
            rep.table(
                ["rank", spec.output["top"]["by"], "influence", "stderr"],
                [[r["rank"], tuple(r["index"]) if isinstance(r["index"], list) else r["index"], f"{r['value']:+.4e}", f"{r['stderr']:.2e}"] for r in rows],
            )
            maps = heatmaps[j] if heatmaps else []
            if maps:
                rep.paragraph(f"Token attributions (red: positive, blue: negative; hover for the value), padding dropped, {len(maps)} of {result.anchors} sentences:")
                for row, m in zip(query.rows.tolist(), maps):
                    rep.tokens(m, f"row {row}")
        for text in texts:
            rep.preformatted(text)
        for path, caption in pictures:
            rep.picture(path, caption)
        self.reported += 1
