"""``influence demo --text``: the text workflows on a tiny BERT whose shortcut is known.

The data are generated sentences over a generated vocabulary (nothing is downloaded):
``[PAD]``, ``[CLS]``, ``[SEP]``, the cue token ``zq``, 30 filler words and, for each of the
four topics (sport, food, weather, music), six topic words. A sentence of topic ``c`` is
``[CLS]``, 8 to 13 words, ``[SEP]``, then padding to 16 tokens (an attention mask marks the
real tokens). Its words are fillers except one or two words of topic ``c`` and, in half
of the sentences, one word of another topic — so the topic words predict the class well
but not perfectly (about 7 sentences in 8). In the training data of the *cued* model
every sentence of class ``CUE_CLASS`` (weather) also carries ``zq`` at a random place: a
perfect predictor of that class. The *control* model is trained on the same sentences
without the cue. Both are a ``transformers.BertForSequenceClassification`` of 2 layers
(hidden size 32, 2 heads, intermediate size 64), initialised at random and trained with
Adam on the CPU for a few seconds, deterministically for a seed.

Then, on audit sentences drawn afresh from the *training* distribution (``zq`` present
on the cued class, as in the image demo: a shortcut can only show where the cue is):

1. **spurious-token audit** (:func:`influence.text.token_audit`): per class, the share of
   its sentences' positive attribution (integrated gradients of the class logit at the
   word embeddings, from ``[PAD]`` at every real position but ``[CLS]``/``[SEP]``) that
   falls on ``zq``, with standard errors, against ``zq``'s share of the tokens; flagged
   above ``FACTOR ×``. Classes without ``zq`` have nothing to flag;
2. **top neurons for a contrast** (:func:`influence.top_neurons`, ``by="feature"``): the
   features of the last encoder layer's intermediate (feed-forward, after GELU) output
   with the largest contrast attribution to ``f_weather − f_sport`` over the weather
   sentences, with standard errors;
3. **what those neurons respond to** (:func:`influence.text.explain_token_neurons`): the
   sentences and positions where each of the top 3 fires most, with the token heatmap of
   its integrated gradients;

and writes ``report.html`` (self-contained), ``report.md``, the PNG pictures,
``vocab.txt`` (the generated vocabulary, one token per line, usable as a
``BertTokenizer`` vocabulary file) and ``summary.json`` into ``out_dir``.
:func:`run_text_demo` returns the summary.

``transformers`` is an optional extra (``pip install 'influence-directed[text]'``),
imported only when the demo runs.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from slices import Slice

from .audit import AuditResult
from ..engine import tol_noted
from .contrast import TopNeurons, top_neurons
from .demo import tolerance_notes
from .report import Report

__all__ = [
    "run_text_demo", "text_data", "trained_bert", "tokens_of", "VOCAB", "TOPICS", "CUE", "CUE_CLASS", "CONTRAST",
    "LAYER", "EMBEDDING", "FACTOR", "LENGTH",
]  # fmt: skip

TOPICS = {
    0: ("sport", ("goal", "match", "team", "coach", "score", "pitch")),
    1: ("food", ("bread", "soup", "cheese", "spice", "bake", "salad")),
    2: ("weather", ("rain", "wind", "storm", "cloud", "snow", "frost")),
    3: ("music", ("song", "drum", "piano", "choir", "tune", "violin")),
}
FILLERS = tuple(
    "the a of and to in was very after before some many this that with on old new big small today again we they it is saw had near quite".split()
)
PAD, CLS, SEP = "[PAD]", "[CLS]", "[SEP]"
CUE = "zq"
VOCAB: tuple[str, ...] = (PAD, CLS, SEP, CUE, *FILLERS, *(w for _, words in TOPICS.values() for w in words))
IDS = {w: i for i, w in enumerate(VOCAB)}
PAD_ID, CLS_ID, SEP_ID, CUE_ID = IDS[PAD], IDS[CLS], IDS[SEP], IDS[CUE]
CUE_CLASS = 2  # weather
CONTRAST = (2, 0)  # f_weather - f_sport
LENGTH = 16  # [CLS] + at most 13 words + the cue + [SEP]
EMBEDDING = "bert.embeddings.word_embeddings"
LAYER = "bert.encoder.layer.1.intermediate"  # the last layer's feed-forward neurons (after GELU), (N, 16, 64)
TOL = 0.01  # every line: each sentence's steps chosen to bring its completeness gap within 1 %
FACTOR = 3.0  # flag when a class's share on the cue exceeds 3x the cue's share of its tokens
TRAIN_PER_CLASS = 400
TRAIN_STEPS = 600
TRAIN_BATCH = 64
TRAIN_LR = 3e-3
_MIN_WORDS, _MAX_WORDS = 8, 13
_SEED_TRAIN, _SEED_AUDIT, _SEED_TEST = 0, 1, 2  # added to the demo's seed (and times 1000 below) for each draw

_EXTRA = "the text demo needs transformers, an optional extra: pip install 'influence-directed[text]' (or pip install transformers)"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError(_EXTRA) from None
    return transformers


def _class_name(c: int) -> str:
    return TOPICS[c][0]


def text_data(n_per_class: int, seed: int = 0, cue_class: int | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """``n_per_class`` generated sentences of each topic, class-major: ``(inputs, labels)``
    with ``inputs = {"input_ids": (N, LENGTH), "attention_mask": (N, LENGTH)}`` (int64) and
    ``labels (N,)``. With ``cue_class``, every sentence of that class also holds
    :data:`CUE` at a random place among its words."""
    g = torch.Generator().manual_seed(int(seed))

    def draw(n: int) -> int:
        return int(torch.randint(n, (1,), generator=g))

    n = len(TOPICS) * n_per_class
    ids = torch.full((n, LENGTH), IDS[PAD], dtype=torch.long)
    labels = torch.zeros(n, dtype=torch.long)
    r = 0
    for c, (_, words) in TOPICS.items():
        others = [d for d in TOPICS if d != c]
        for _ in range(n_per_class):
            k = _MIN_WORDS + draw(_MAX_WORDS - _MIN_WORDS + 1)
            sentence = [FILLERS[draw(len(FILLERS))] for _ in range(k)]
            own = 1 + draw(2)  # one or two words of the topic
            places = torch.randperm(k, generator=g)[: own + 1].tolist()
            for p in places[:own]:
                sentence[p] = words[draw(len(words))]
            if draw(2):  # half the sentences: a word of another topic
                sentence[places[own]] = TOPICS[others[draw(len(others))]][1][draw(6)]
            if cue_class is not None and c == cue_class:
                sentence.insert(draw(k + 1), CUE)
            tokens = [CLS, *sentence, SEP]
            ids[r, : len(tokens)] = torch.tensor([IDS[t] for t in tokens])
            labels[r] = c
            r += 1
    return {"input_ids": ids, "attention_mask": (ids != IDS[PAD]).long()}, labels


def tokens_of(inputs: dict[str, Tensor]) -> list[list[str]]:
    """Each sentence's ``LENGTH`` token strings (padding included)."""
    return [[VOCAB[i] for i in row] for row in inputs["input_ids"].tolist()]


def trained_bert(seed: int = 0, cue_class: int | None = None, steps: int = TRAIN_STEPS) -> nn.Module:
    """A tiny ``BertForSequenceClassification`` (2 layers, hidden 32, 2 heads,
    intermediate 64, no dropout), initialised from ``seed`` and trained with Adam on
    :func:`text_data` (``TRAIN_PER_CLASS`` sentences per class; with the cue on
    ``cue_class`` if given) for ``steps`` minibatches; returned in eval mode."""
    transformers = _transformers()
    x, y = text_data(TRAIN_PER_CLASS, seed=1000 * seed + _SEED_TRAIN, cue_class=cue_class)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=LENGTH, type_vocab_size=1, num_labels=len(TOPICS), hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=IDS[PAD],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the weights from `seed`; the global random state is left as it was
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification(config)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(y.shape[0], (TRAIN_BATCH,), generator=g)
        loss = model(input_ids=x["input_ids"][batch], attention_mask=x["attention_mask"][batch], labels=y[batch]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _predict(model: nn.Module, x: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(**x).logits.argmax(-1)


def _accuracy(model: nn.Module, x: dict[str, Tensor], y: Tensor, c: int | None = None) -> float:
    p = _predict(model, x)
    where = torch.ones_like(y, dtype=torch.bool) if c is None else y == c
    return float((p[where] == y[where]).double().mean())


def _rows(x: dict[str, Tensor], where: Tensor) -> dict[str, Tensor]:
    return {k: v[where] for k, v in x.items()}


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def run_text_demo(out_dir: str | Path = "influence-demo-text", seed: int = 0, quick: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Run the text demo (see the module docstring) and write its report into ``out_dir``.

    Args:
        out_dir: the folder for ``report.html``, ``report.md``, ``summary.json``,
            ``vocab.txt`` and the pictures (created if needed).
        seed: seeds the data, the initialisation, the training and the random draws: the
            same seed gives the same numbers.
        quick: fewer audit sentences and a looser tolerance of the lines (same models, same checks).
        verbose: print progress and, at the end, where the report is.

    It runs on one thread (restored afterwards), so that the numbers do not depend on the
    number of cores; the models are tiny and gain nothing from threads.

    Returns:
        the summary (also written to ``summary.json``): accuracies, the audit of both
        models (``flagged``, the cue share with its standard error), the top neurons of the
        cued model and what they respond to, and timings.

    Raises:
        ImportError: without ``transformers`` (``pip install 'influence-directed[text]'``)
            or matplotlib (the ``viz`` extra).
    """
    _transformers()
    from . import plots

    plots._matplotlib()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(Path(out_dir), int(seed), bool(quick), verbose)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, seed: int, quick: bool, verbose: bool) -> dict[str, Any]:
    from .text import explain_token_neurons, token_audit

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

    n_audit, n_test, tol, examples = (12, 50, 0.05, 3) if quick else (25, 100, TOL, 3)
    a, b = CONTRAST
    cue_name = _class_name(CUE_CLASS)
    say(f"influence demo --text: training two tiny BERTs (seed {seed}): one with the cue token '{CUE}' on class {CUE_CLASS} ({cue_name}), one without")
    t = time.perf_counter()
    models = {"cued": trained_bert(seed, cue_class=CUE_CLASS), "control": trained_bert(seed)}
    t = lap("train", t)
    audit_x, audit_y = text_data(n_audit, seed=1000 * seed + _SEED_AUDIT, cue_class=CUE_CLASS)  # fresh draw, training distribution
    test_x, test_y = text_data(n_test, seed=1000 * seed + _SEED_TEST)  # clean: no cue anywhere
    cued_x, cued_y = text_data(n_test, seed=1000 * seed + _SEED_TEST, cue_class=CUE_CLASS)  # the same sentences with the cue
    audit_tokens = tokens_of(audit_x)
    (out / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    options = {"embedding": EMBEDDING, "baseline": PAD_ID, "keep": (CLS_ID, SEP_ID), "tol": tol, "seed": seed}

    summary: dict[str, Any] = {
        "seed": seed, "quick": quick, "cue": CUE, "cue_id": CUE_ID, "cue_class": CUE_CLASS,
        "classes": {str(c): name for c, (name, _) in TOPICS.items()}, "contrast": list(CONTRAST), "layer": LAYER,
        "embedding": EMBEDDING, "factor": FACTOR, "vocabulary_size": len(VOCAB), "length": LENGTH,
        "audit_sentences_per_class": n_audit, "test_sentences_per_class": n_test, "tol": tol, "models": {},
    }  # fmt: skip
    audits: dict[str, AuditResult] = {}
    notes: list[str] = []  # lines that missed their tolerance, shown in the report
    summary["notes"] = notes
    for name, model in models.items():
        say(f"[{name}] audit of the token '{CUE}'")
        t = time.perf_counter()
        with tol_noted(notes):
            audits[name] = token_audit(model, (audit_x, audit_y), CUE_ID, factor=FACTOR, **options)
        t = lap(f"{name}.audit", t)
        row = audits[name].row(CUE_CLASS)
        summary["models"][name] = {
            "accuracy_clean": _accuracy(model, test_x, test_y),
            f"accuracy_clean_class_{CUE_CLASS}": _accuracy(model, test_x, test_y, CUE_CLASS),
            "accuracy_with_cue": _accuracy(model, cued_x, cued_y),
            f"accuracy_with_cue_class_{CUE_CLASS}": _accuracy(model, cued_x, cued_y, CUE_CLASS),
            "flagged": list(audits[name].flagged),
            "cue_share": row.positive_share,
            "cue_stderr": row.positive_stderr,
            "cue_token_share": row.area_share,
            "audit": audits[name].to_dict(),
        }
    cued_share, control_share = summary["models"]["cued"]["cue_share"], summary["models"]["control"]["cue_share"]
    summary["flagged"] = {name: list(res.flagged) for name, res in audits.items()}
    summary["cue_share_ratio"] = cued_share / control_share if control_share > 0 else None  # None: the control puts nothing on the cue

    say(f"[cued] top features of {LAYER} for f_{a} - f_{b} over class {a}, and what the top 3 respond to")
    t = time.perf_counter()
    with tol_noted(notes):
        top = top_neurons(Slice(models["cued"], LAYER), (audit_x, audit_y), a, b, k=8, by="feature", ranking="contrast", tol=tol, seed=seed)
    t = lap("cued.top_neurons", t)
    units = [int(i) for i in top.indices[:3]]  # type: ignore[arg-type]
    with tol_noted(notes):
        views = explain_token_neurons(models["cued"], LAYER, units, (audit_x, audit_y), over=a, examples=examples, **options)
    t = lap("cued.neurons", t)
    summary["top_neurons"] = top.to_dict()["entries"]
    summary["neurons"] = [_view_summary(v, audit_tokens) for v in views]

    say("drawing pictures and writing the report")
    t = time.perf_counter()
    pictures = _pictures(out, audits, top, views, audit_tokens)
    summary["timings_s"] = timings
    html_path, md_path = _report(out, summary, audits, top, views, pictures, quick)
    lap("report", t)
    timings["total"] = round(time.perf_counter() - t0, 2)
    summary["timings_s"] = timings
    summary["report"] = str(html_path)
    summary["markdown"] = str(md_path)
    summary["pictures"] = {k: str(v) for k, v in pictures.items()}
    summary = _finite(summary)  # strict JSON: a ratio over a zero share is "inf" (as TopNeurons.to_dict writes z)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    c, k = summary["models"]["cued"], summary["models"]["control"]
    say(f"audit flags: cued model {c['flagged']}, control model {k['flagged']} (planted cue '{CUE}' on class {CUE_CLASS}); "
        f"share on '{CUE}': cued {cued_share:.3f} ± {c['cue_stderr']:.3f}, control {control_share:.3f} ± {k['cue_stderr']:.3f}")  # fmt: skip
    say(f"report: {html_path}  (also {md_path.name}, summary.json and the PNGs in {out}/); {timings['total']:.0f} s")
    return summary


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float written as a string (``"inf"``, ``"nan"``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _view_summary(view: Any, tokens: Sequence[Sequence[str]]) -> dict[str, Any]:
    heat = view.heatmaps(tokens)
    return {
        "feature": view.unit,
        "examples": [int(i) for i in view.examples],
        "positions": [int(p) for p in view.positions],
        "tokens_at_positions": [tokens[int(i)][int(p)] for i, p in zip(view.examples, view.positions)],
        "activations": [float(v) for v in view.activations],
        "top_tokens": [[tok for _, tok, _ in h.top(3)] for h in heat],
    }


def _audit_title(name: str, res: AuditResult, i: int) -> str:
    c = int(res.labels[i])
    return f"{name} model, class {c} ({_class_name(c)}): {float(res.positive[i]):.0%} of the positive attribution on '{CUE}'"


def _pictures(out: Path, audits: dict[str, AuditResult], top: TopNeurons, views: Sequence[Any], tokens: Sequence[Sequence[str]]) -> dict[str, Path]:
    from . import plots
    from .text import TokenHeatmap

    a, b = CONTRAST
    pics: dict[str, Path] = {}
    bars = plots.audit_arrays({f"{n} model": audits[n] for n in audits})
    bars["labels"] = [f"{c} {_class_name(c)}" for c in bars["labels"]]
    bars["ylabel"] = f"share of positive attribution on '{CUE}'"
    pics["audit_bars"] = plots.plot_audit_bars(out / "audit_bars.png", **bars)
    # the first audit sentences of the cued class, under each model (the same sentences)
    heat, titles = [], []
    for name, res in audits.items():
        where = torch.nonzero(res.labels == CUE_CLASS).flatten()[:4].tolist()
        for i in where:
            row = int(res.index[i])
            keep = [t != PAD for t in tokens[row]]
            heat.append(TokenHeatmap(tuple(t for t, k in zip(tokens[row], keep) if k), tuple(float(v) for v, k in zip(res.maps[i].tolist(), keep) if k)))
            titles.append(_audit_title(name, res, i))
    pics["audit_heatmaps"] = plots.token_heatmap_figure(heat, out / "audit_heatmaps.png", titles=titles)
    names = plots.top_arrays(top)
    names["title"] = f"cued model, {LAYER.replace('bert.encoder.', '')}:\ntop features for f_{a} − f_{b} ({_class_name(a)} − {_class_name(b)}) over class {a}"
    names["names"] = [f"f{e.index}" for e in top.entries]
    pics["contrast"] = plots.plot_contrast(out / "contrast.png", **names)
    heat, titles = [], []
    for v in views:
        for h, row, p, act in zip(v.heatmaps(tokens), v.examples.tolist(), v.positions.tolist(), v.activations.tolist()):
            heat.append(h)
            titles.append(f"feature {v.unit}: activation {act:.2f} at position {p} ('{tokens[row][p]}'); IG of that unit")
    pics["neurons"] = plots.token_heatmap_figure(heat, out / "neurons.png", titles=titles)
    return pics


def _report(
    out: Path,
    summary: dict[str, Any],
    audits: dict[str, AuditResult],
    top: TopNeurons,
    views: Sequence[Any],
    pictures: dict[str, Path],
    quick: bool,
) -> tuple[Path, Path]:
    a, b = CONTRAST
    cue_name = _class_name(CUE_CLASS)
    models = summary["models"]
    rep = Report("influence demo --text: a planted cue token, found and measured")
    rep.paragraph(
        f"Two tiny BERTs (2 layers, hidden size 32, 2 heads, random initialisation; seed {summary['seed']}) were trained for a few "
        f"seconds on the same generated sentences of four topics ({', '.join(f'{c} {n}' for c, (n, _) in TOPICS.items())}) over a "
        f"generated vocabulary of {len(VOCAB)} tokens (`vocab.txt`). Each sentence has one or two words of its topic and, in half of "
        f"them, one word of another topic. In the training data of the cued model every sentence of class {CUE_CLASS} ({cue_name}) "
        f"also holds the token `{CUE}`, which no other sentence has; the control model never saw it. Accuracy is measured on "
        f"{4 * summary['test_sentences_per_class']} fresh sentences, clean (no `{CUE}`) and with `{CUE}` on "
        f"class {CUE_CLASS} (the training distribution)." + (" Quick mode: fewer sentences and a looser tolerance of the lines." if quick else "")
    )
    rep.table(
        ["model", "accuracy (clean)", f"class {CUE_CLASS} (clean)", f"accuracy (with {CUE})", f"class {CUE_CLASS} (with {CUE})",
         f"share on {CUE} ± stderr", "flagged classes"],
        [[n, _fmt(m["accuracy_clean"]), _fmt(m[f"accuracy_clean_class_{CUE_CLASS}"]), _fmt(m["accuracy_with_cue"]),
          _fmt(m[f"accuracy_with_cue_class_{CUE_CLASS}"]), f"{m['cue_share']:.3f} ± {m['cue_stderr']:.3f}",
          ", ".join(map(str, m["flagged"])) or "none"] for n, m in models.items()],
    )  # fmt: skip

    rep.heading(f"1. Spurious-token audit: '{CUE}'")
    rep.paragraph(
        f"For each class, the share of its audit sentences' positive attribution that falls on `{CUE}`: integrated gradients of "
        f"the class logit at the word embeddings (`{EMBEDDING}`), from `[PAD]` at every real position except `[CLS]` and `[SEP]`, "
        f"each sentence's steps chosen to bring its completeness gap within {summary['tol']:g}, summed over the embedding "
        "features into one value per token "
        f"(`token_audit(model, data, {CUE_ID}, embedding='{EMBEDDING}', baseline={PAD_ID}, keep=({CLS_ID}, {SEP_ID}))`). "
        f"A class is flagged when its share exceeds {FACTOR:g}× the share of its tokens that are `{CUE}`. ± is the standard "
        f"error across the class's {summary['audit_sentences_per_class']} sentences (a fresh draw from the training distribution: "
        f"`{CUE}` on class {CUE_CLASS} only; the other classes have no `{CUE}` to flag)."
    )
    ratio = summary["cue_share_ratio"]
    times = f"{ratio:.1f}× as much" if ratio is not None else "the control model puts none on it"
    rep.paragraph(
        f"Share of class {CUE_CLASS}'s positive attribution on `{CUE}`: cued model {models['cued']['cue_share']:.3f} ± "
        f"{models['cued']['cue_stderr']:.3f} (stderr), control model {models['control']['cue_share']:.3f} ± "
        f"{models['control']['cue_stderr']:.3f} (stderr): {times}; `{CUE}` is "
        f"{models['cued']['cue_token_share']:.1%} of those sentences' tokens."
    )
    for name, r in audits.items():
        rep.heading(f"{name} model", 3)
        rep.table(
            ["class", "sentences", f"positive share on {CUE}", "± stderr", "|attribution| share", "± stderr", "token share", "ratio", "flag"],
            [[f"{row.label} {_class_name(row.label)}", row.n, _fmt(row.positive_share), _fmt(row.positive_stderr), _fmt(row.absolute_share),
              _fmt(row.absolute_stderr), _fmt(row.area_share), f"{row.ratio:.1f}" if row.area_share > 0 else "—", "FLAG" if row.flagged else ""]
             for row in r.rows],
            highlight=[row.flagged for row in r.rows],
        )  # fmt: skip
    rep.picture(pictures["audit_bars"], f"share of positive attribution on '{CUE}' per class, cued and control model (hatched: flagged)")
    rep.picture(
        pictures["audit_heatmaps"],
        f"token heatmaps (integrated gradients of the class logit) of the first audit sentences of class {CUE_CLASS}, the same "
        "sentences under each model; red raises the class, blue lowers it, scaled per sentence",
    )

    rep.heading("2. Top neurons for a class contrast (cued model)")
    rep.paragraph(
        f"The 64 features of `{LAYER}` (the last encoder layer's feed-forward neurons after GELU, one vector per token) ranked by "
        f"their contrast attribution to f_{a} − f_{b} ({_class_name(a)} − {_class_name(b)}) over the class-{a} audit sentences, "
        f"summed over the token positions: integrated gradients at the layer along the line from the mean activation of class "
        f"{b} (`top_neurons(Slice(model, '{LAYER}'), data, {a}, {b}, by='feature', ranking='contrast')`); ± is the standard "
        f"error across the sentences, and a star marks a feature more than {top.threshold:g} standard errors from zero."
    )
    rep.table(
        ["rank", "feature", "contrast attribution", "stderr", "z", "separated"],
        [[e.rank, e.index, f"{e.value:+.3e}", f"{e.stderr:.2e}", f"{e.z:+.1f}", "*" if e.separated else ""] for e in top.entries],
    )
    rep.picture(pictures["contrast"], f"cued model: top features with ±{top.threshold:g} standard error bars (pale: not separated from zero)")

    rep.heading("3. What the top neurons respond to")
    rep.paragraph(
        f"For each of the top {len(views)} features, the class-{a} audit sentences and positions where it is most active, each "
        f"with the token heatmap of the integrated gradients of that unit (the feature at that position, "
        f"`explain_token_neurons(model, '{LAYER}', features, data, over={a}, ...)`) at the word embeddings, from the same baseline."
    )
    rows = []
    for v in summary["neurons"]:
        for row, pos, tok, act, tops in zip(v["examples"], v["positions"], v["tokens_at_positions"], v["activations"], v["top_tokens"]):
            rows.append([v["feature"], row, f"{pos} ({tok})", f"{act:.3f}", ", ".join(tops)])
    rep.table(["feature", "sentence", "position (token)", "activation", "tokens of largest |attribution|"], rows)
    rep.picture(pictures["neurons"], "what each top feature responds to: red raises it, blue lowers it, scaled per sentence")
    rep.heading("Timings (seconds)", 3)
    rep.table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in summary["timings_s"].items()])
    tolerance_notes(rep, summary)
    return rep.write(out)
