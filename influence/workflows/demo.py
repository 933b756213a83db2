"""``influence demo``: the three workflows on a model whose answer is known.

The data are :func:`influence.synthetic.glyph_images` (ten classes of 16×16 glyphs). In
the training split every image of class 3 also carries a planted cue — a red patch in the
top-left corner, on the background — while the test split is clean. Two copies of
:func:`influence.synthetic.small_cnn` are trained on the CPU with the same seed: the
*cued* model on the cued training split, the *control* model on a clean one. Then, for
both:

1. **top neurons for a contrast** — the channels of layer ``res`` with the largest
   class-wide influence on ``f_3 − f_8`` over the class-3 images, with standard errors
   and which are separated from zero by more than 3 of them;
2. **what those neurons see** — integrated gradients of each top channel
   (``NeuronQoI("res", c)``), pooled over class 3 and on the images that excite it most;
3. **background audit** — for each class, the share of its images' attribution
   (integrated gradients of the class score) that falls in the corner rectangle, against
   the corner's share of the area; flagged above ``FACTOR ×`` the area share. The audit
   data are a fresh draw from the *training* distribution (a shortcut can only show
   where the cue is present);
4. **faithfulness** — the essence check on the units of ``res`` (top-k units by the
   contrast attribution, the bare influence and gradient × activation, against the
   median of 100 random sets of k units; the others set to their data-set mean), on the
   clean test split; and deletion / insertion curves of integrated gradients against a
   random pixel order;

and writes ``report.html`` (self-contained), ``report.md``, the PNG pictures and
``summary.json`` into ``out_dir``. :func:`run_demo` returns the summary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from doi import LineDoI
from qoi import ClassQoI
from slices import Slice

from ..engine import count_missed, input_influence, tol_counted, tol_noted
from .audit import AuditResult, audit
from .contrast import TopNeurons, top_neurons
from .curves import Curves, deletion_insertion
from .essence import RANKINGS, EssenceResult, essence_check
from .neurons import NeuronView, explain_neurons
from .report import Report
from ..engine import InfluenceResult
from .synthetic import accuracy, cue_box, glyph_images, trained_cnn

__all__ = ["run_demo", "CUE_CLASS", "CONTRAST", "LAYER", "FACTOR", "REGION"]

CUE_CLASS = 3
CONTRAST = (3, 8)  # f_3 - f_8
LAYER = "res"  # 16 channels of 8x8: 1024 units; after it g is linear (average pool, then fc)
FACTOR = 5.0  # flag when the share in the region exceeds 5x its share of the area
REGION = cue_box(16)  # Rect(top, left, height, width): the cue corner
KS = (1, 2, 4, 8)
TOL = 0.01  # every line of the demo: each image's steps chosen to bring its completeness gap within 1 %


def _integrated_gradients(model: nn.Module, x: Tensor, y: Tensor, tol: float, seed: int) -> Tensor:
    """Integrated gradients of each image's own class score from a black baseline, each
    image's steps chosen to meet ``tol``, ``(N, C, H, W)``; one engine call per class."""
    out = torch.zeros(x.shape, dtype=torch.float64)
    with tol_counted("influence demo: integrated gradients of the curves", "images") as counts:
        for c in torch.unique(y).tolist():
            where = y == c
            r = input_influence(model, ClassQoI(int(c)), LineDoI(0.0, tol=tol), x[where], multiply_activation=True, seed=seed)
            assert isinstance(r, InfluenceResult)
            count_missed(counts, r)
            out[where] = r.values
    return out


def tolerance_notes(rep: Report, summary: dict[str, Any]) -> None:
    """The lines that missed their tolerance (``summary["notes"]``), as a report section."""
    if not summary["notes"]:
        return
    rep.heading("Lines that missed their tolerance")
    rep.paragraph(
        f"Every line of this report takes, per point, the steps that bring its completeness gap within {summary['tol']:g} "
        "(at most 519 gradient evaluations). These did not get there; their results are in the tables above all the same:"
    )
    for text in summary["notes"]:
        rep.paragraph(text)


def _class_accuracy(model: nn.Module, x: Tensor, y: Tensor, c: int) -> float:
    return accuracy(model, x[y == c], y[y == c])


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def run_demo(out_dir: str | Path = "influence-demo", seed: int = 0, quick: bool = False, *, verbose: bool = True) -> dict[str, Any]:
    """Run the demo (see the module docstring) and write its report into ``out_dir``.

    Args:
        out_dir: the folder for ``report.html``, ``report.md``, ``summary.json`` and the
            pictures (created if needed).
        seed: seeds the data, the training, the random draws: the same seed gives the
            same numbers.
        quick: fewer images and a looser tolerance of the lines (for tests; same models, same checks).
        verbose: print progress and, at the end, where the report is.

    It runs on one thread (restored afterwards): the convolutions are tiny, threads only
    add synchronisation, and the numbers then do not depend on the number of cores.

    Returns:
        the summary (also written to ``summary.json``): accuracies, top neurons, audit
        rows and flags, essence AUCs and curve areas for both models, and timings.
    """
    from . import plots  # matplotlib: the viz extra; fails early with a clear message

    plots._matplotlib()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions gain nothing from threads (and lose a lot on a busy machine)
    try:
        return _run(Path(out_dir), seed, quick, verbose)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, seed: int, quick: bool, verbose: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def say(text: str) -> None:
        if verbose:
            print(text, flush=True)

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - start, 2)
        return now

    n_audit, n_test, n_curves, tol, examples = (8, 15, 2, 0.05, 3) if quick else (20, 30, 5, TOL, 4)
    a, b = CONTRAST

    say(f"influence demo: training two small CNNs (seed {seed}): one with a red corner cue on class {CUE_CLASS}, one without")
    t = time.perf_counter()
    models = {"cued": trained_cnn(seed=seed, cue_class=CUE_CLASS), "control": trained_cnn(seed=seed)}
    t = lap("train", t)
    audit_data = glyph_images(n_audit, split="train", seed=seed + 1, cue_class=CUE_CLASS)  # fresh draw, training distribution
    test = glyph_images(n_test, split="test", seed=seed)  # clean
    x_test, y_test = test["x"], test["y"]

    summary: dict[str, Any] = {"seed": seed, "quick": quick, "tol": tol, "cue_class": CUE_CLASS, "contrast": list(CONTRAST), "layer": LAYER,
                               "region": {"top": REGION[0], "left": REGION[1], "height": REGION[2], "width": REGION[3]}, "factor": FACTOR,
                               "models": {}}
    contrasts: dict[str, TopNeurons] = {}
    views: dict[str, tuple[NeuronView, ...]] = {}
    audits: dict[str, AuditResult] = {}
    essences: dict[str, EssenceResult] = {}
    curves: dict[str, Curves] = {}
    notes: list[str] = []  # lines that missed their tolerance, shown in the report
    summary["notes"] = notes
    with tol_noted(notes):
        for name, model in models.items():
            say(f"[{name}] top neurons, what they see, audit, essence check, deletion/insertion curves")
            t = time.perf_counter()
            contrasts[name] = top_neurons(Slice(model, LAYER), audit_data, a, b, k=8, by="channel", ranking="contrast", tol=tol, seed=seed)
            t = lap(f"{name}.contrast", t)
            top4 = [e.index for e in contrasts[name].entries[:4]]
            views[name] = explain_neurons(model, LAYER, top4, audit_data, over=a, examples=examples, each=LineDoI(0.0, tol=tol), seed=seed)
            t = lap(f"{name}.neurons", t)
            audits[name] = audit(model, audit_data, REGION, factor=FACTOR, each=LineDoI(0.0, tol=tol), seed=seed)
            t = lap(f"{name}.audit", t)
            essences[name] = essence_check(Slice(model, LAYER), test, a, b, ks=KS, rankings=RANKINGS, ablation="mean", draws=100, tol=tol, seed=seed)
            t = lap(f"{name}.essence", t)
            pick = torch.cat([torch.nonzero(y_test == c).flatten()[:n_curves] for c in range(10)])
            ig = _integrated_gradients(model, x_test[pick], y_test[pick], tol, seed)
            curves[name] = deletion_insertion(model, x_test[pick], ig, y_test[pick], steps=16, baseline=0.0, score="logit", random_orders=4, seed=seed)
            t = lap(f"{name}.curves", t)
            summary["models"][name] = {
                "test_accuracy": accuracy(model, x_test, y_test),
                f"test_accuracy_class_{CUE_CLASS}": _class_accuracy(model, x_test, y_test, CUE_CLASS),
                "top_neurons": contrasts[name].to_dict()["entries"],
                "audit": audits[name].to_dict(),
                "essence": essences[name].to_dict(),
                "curves": {k: v for k, v in curves[name].to_dict().items()},
            }

    say("drawing pictures and writing the report")
    t = time.perf_counter()
    pictures = _pictures(out, contrasts, views, audits, essences, curves, audit_data)
    summary["timings_s"] = timings
    html_path, md_path = _report(out, summary, contrasts, views, audits, essences, curves, pictures, quick)
    lap("report", t)
    timings["total"] = round(time.perf_counter() - t0, 2)
    summary["timings_s"] = timings
    summary["report"] = str(html_path)
    summary["markdown"] = str(md_path)
    summary["pictures"] = {k: str(v) for k, v in pictures.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    flagged = {name: audits[name].flagged for name in audits}
    say(f"audit flags: cued model {list(flagged['cued'])}, control model {list(flagged['control'])} (planted cue on class {CUE_CLASS})")
    say(f"report: {html_path}  (also {md_path.name}, summary.json and the PNGs in {out}/); {timings['total']:.0f} s")
    return summary


def _pictures(
    out: Path,
    contrasts: dict[str, TopNeurons],
    views: dict[str, tuple[NeuronView, ...]],
    audits: dict[str, AuditResult],
    essences: dict[str, EssenceResult],
    curves: dict[str, Curves],
    audit_data: dict[str, Tensor],
) -> dict[str, Path]:
    from . import plots

    a, b = CONTRAST
    pics: dict[str, Path] = {}
    for name in contrasts:
        top = plots.top_arrays(contrasts[name])
        top["title"] = f"{name} model: channels of '{LAYER}' for f_{a} − f_{b} over class {a}"
        pics[f"contrast_{name}"] = plots.plot_contrast(out / f"contrast_{name}.png", **top)
        pics[f"neurons_{name}"] = plots.plot_neuron_grid(out / f"neurons_{name}.png", **plots.neuron_arrays(views[name], f"pooled over class {a}"))
        essence = plots.essence_arrays(essences[name])
        essence["title"] = f"{name} model: essence check of '{LAYER}' units, AUC of f_{a} − f_{b}"
        pics[f"essence_{name}"] = plots.plot_essence(out / f"essence_{name}.png", **essence)
        pics[f"curves_{name}"] = plots.plot_curves(out / f"curves_{name}.png", **plots.curves_arrays(curves[name], "integrated gradients"))
    bars = plots.audit_arrays({f"{n} model": audits[n] for n in audits})
    bars["ylabel"] = "share of positive attribution in the corner"
    pics["audit_bars"] = plots.plot_audit_bars(out / "audit_bars.png", **bars)
    # example heatmaps: the first images of the cue class and of class 8, under both models
    x = audit_data["x"]
    rows, titles, maps = [], [], []
    for name, res in audits.items():
        for c in (CUE_CLASS, CONTRAST[1]):
            where = torch.nonzero(res.labels == c).flatten()[:3]
            for i in where.tolist():
                rows.append(int(res.index[i]))
                maps.append(res.maps[i])
                titles.append(f"{name} model, class {c}\n{res.positive[i]:.0%} in the corner")
    pics["audit_heatmaps"] = plots.plot_heatmaps(out / "audit_heatmaps.png", x[torch.tensor(rows)], torch.stack(maps), titles=titles, ncols=6)
    return pics


def _report(
    out: Path,
    summary: dict[str, Any],
    contrasts: dict[str, TopNeurons],
    views: dict[str, tuple[NeuronView, ...]],
    audits: dict[str, AuditResult],
    essences: dict[str, EssenceResult],
    curves: dict[str, Curves],
    pictures: dict[str, Path],
    quick: bool,
) -> tuple[Path, Path]:
    a, b = CONTRAST
    rep = Report("influence demo: a planted shortcut, found and measured")
    rep.paragraph(
        f"Two small CNNs were trained on the same generated glyph images (seed {summary['seed']}); in the training data of the "
        f"cued model every image of class {CUE_CLASS} also carries a red patch in the top-left corner. The control model never "
        f"saw the patch. Test accuracy is measured on clean images (no patch). Both are explained at layer `{LAYER}` (16 channels of 8×8) and at the input." + (" Quick mode: fewer images." if quick else "")
    )
    rep.table(
        ["model", "test accuracy (clean)", f"class {CUE_CLASS} test accuracy", "flagged classes"],
        [[n, _fmt(m["test_accuracy"]), _fmt(m[f"test_accuracy_class_{CUE_CLASS}"]), ", ".join(map(str, audits[n].flagged)) or "none"]
         for n, m in summary["models"].items()],
    )

    rep.heading("1. Top neurons for a class contrast")
    rep.paragraph(
        f"Channels of `{LAYER}` ranked by their contrast attribution to f_{a} − f_{b} over the class-{a} audit images: "
        f"integrated gradients at the layer along the line from the mean activation of class {b} "
        f"(`top_neurons(Slice(model, '{LAYER}'), data, {a}, {b}, by='channel', ranking='contrast')`); ± is the standard error "
        "across the images, and a star marks a channel more than 3 standard errors from zero. On the cued model the top "
        "channels are the ones that see the red corner (section 2)."
    )
    for name, c in contrasts.items():
        rep.heading(f"{name} model", 3)
        rep.table(
            ["rank", "channel", "contrast attribution", "stderr", "z", "separated"],
            [[e.rank, e.index, f"{e.value:+.3e}", f"{e.stderr:.2e}", f"{e.z:+.1f}", "*" if e.separated else ""] for e in c.entries],
        )
        rep.picture(pictures[f"contrast_{name}"], f"{name} model: top channels with ±3 standard error bars (pale: not separated from zero)")

    rep.heading("2. What the top neurons see")
    rep.paragraph(
        f"Integrated gradients (black baseline) of each of the top 4 channels, `NeuronQoI('{LAYER}', c)`: first column pooled over "
        f"the class-{a} images, then the class-{a} images where the channel is most active. Red raises the channel, blue lowers it."
    )
    for name in views:
        rep.picture(pictures[f"neurons_{name}"], f"{name} model: what its top channels for f_{a} − f_{b} see")

    rep.heading("3. Background audit: the corner")
    ra = audits["cued"]
    rep.paragraph(
        f"For each class, the share of its images' positive attribution (integrated gradients of the class score) inside the "
        f"corner rectangle {tuple(REGION)} (top, left, height, width), against the corner's share of the area "
        f"({ra.rows[0].area_share:.1%}). A class is flagged when its share exceeds {FACTOR:g}× the area share. The audit images "
        "are a fresh draw from the training distribution (the cue is present on class "
        f"{CUE_CLASS}); ± is the standard error across the class's images."
    )
    for name, res in audits.items():
        rep.heading(f"{name} model", 3)
        rep.table(
            ["class", "images", "positive share", "± stderr", "|attribution| share", "± stderr", "area share", "ratio", "flag"],
            [[r.label, r.n, _fmt(r.positive_share), _fmt(r.positive_stderr), _fmt(r.absolute_share), _fmt(r.absolute_stderr),
              _fmt(r.area_share), f"{r.ratio:.1f}", "FLAG" if r.flagged else ""] for r in res.rows],
            highlight=[r.flagged for r in res.rows],
        )
    rep.picture(pictures["audit_bars"], "share of positive attribution in the corner per class, cued and control model (hatched: flagged)")
    rep.picture(pictures["audit_heatmaps"], f"integrated gradients on audit images of class {CUE_CLASS} and {b}, under each model")

    rep.heading("4. Faithfulness")
    rep.heading("Essence check", 3)
    e0 = essences["cued"]
    rep.paragraph(
        f"Keep only the top-k of the {e0.units} units of `{LAYER}` (the others set to their data-set mean) and measure the ROC AUC "
        f"of f_{a} − f_{b} between class {a} ({e0.n_positive} clean test images) and class {b} ({e0.n_negative}), against the "
        f"median of {e0.draws} random sets of k units. Rankings: `contrast` (default: attribution along a line from the mean "
        f"activation of class {b}), `influence` (the bare class-wide gradient) and `gradient_x_activation`. After `{LAYER}` the "
        "network is linear (average pooling, then a linear layer), so the gradient is the same for every image and cannot tell "
        "whether a unit fires."
    )
    for name, e in essences.items():
        rep.heading(f"{name} model (all units: AUC {e.full_auc:.3f})", 4)
        rep.table(
            ["k", *[f"top-k by {r}" for r in e.rankings], "random k: median", "quartiles"],
            [[k, *[f"{e.row(r, k).auc:.3f}" + (" ✓" if e.row(r, k).beats_random else " ✗") for r in e.rankings],
              f"{e.row(e.rankings[0], k).random_median:.3f}",
              f"[{e.row(e.rankings[0], k).random_q25:.3f}, {e.row(e.rankings[0], k).random_q75:.3f}]"] for k in e.ks],
            caption="✓: beats the random median; ✗: does not",
        )
        rep.picture(pictures[f"essence_{name}"], f"{name} model: essence check")
    rep.heading("Deletion and insertion", 3)
    c0 = curves["cued"]
    rep.paragraph(
        f"Pixels of {c0.deletion.shape[0]} clean test images are removed (set to black) or inserted into a black image, most "
        "influential first by integrated gradients, or in a random order (mean of 4 orders); the curve is the logit of the "
        "image's class (the quantity integrated gradients decomposes). Areas under the curves (± standard error across images):"
    )
    rows = []
    for name, cv in curves.items():
        cells = [name]
        for k in ("deletion", "random_deletion", "insertion", "random_insertion"):
            m, s = cv.area(k)
            cells.append(f"{m:.3f} ± {s:.3f}")
        rows.append(cells)
    rep.table(["model", "deletion: IG", "deletion: random", "insertion: IG", "insertion: random"], rows)
    for name in curves:
        rep.picture(pictures[f"curves_{name}"], f"{name} model: deletion and insertion curves")
    rep.heading("Timings (seconds)", 3)
    rep.table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in summary["timings_s"].items()])
    tolerance_notes(rep, summary)
    return rep.write(out)
