"""The ``influence`` command line (also ``python -m influence``).

``influence run QUERY.yaml`` runs the queries of a YAML file and prints a table per
query; ``influence validate QUERY.yaml`` checks a file without importing anything and
lists the callables running it would import and call; ``influence schema`` prints the JSON
Schema of query files; ``influence layers MODEL`` lists a model's layers with their output shapes; ``influence
demo`` runs the built-in example end to end and writes its report. Exit codes:
0 success, 2 a bad query (one line naming the field: ``error: queries[1].doi.steps:
must be an int >= 1 (got -3)``), 1 a failure while computing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from doi import NoiseDoI, PointwiseDoI

from ..engine import InfluenceResult, atomic_write
from ..engine import distributed as _distributed
from ._outputs import Extras
from .checks import QueryError
from .loading import load_data, load_model
from .running import BuiltQuery
from .schema import load_query_file
from .summaries import region_table, token_table, top_table

EPILOG = """\
examples:
  influence run examples/top_neurons.yaml              run every query, print tables,
                                                       write out/top_neurons/*.json|*.pt
  influence run audit.yaml --out results --quiet      only the one-line summary
  influence run ig.yaml --device cuda                 compute on the GPU
  influence validate examples/background_audit.yaml    check a file; loads nothing heavy
  influence layers examples/top_neurons.yaml           the layers of a query file's model
  influence layers torchvision.models:resnet18 --input-shape 3,224,224
  influence layers model.pt --input-shape 3,32,32      a TorchScript file
  influence schema --out query.schema.json             the JSON Schema of query files, for
                                                       editors (README: Editor support)
  influence demo                                       the built-in example, end to end:
                                                       trains two small CNNs, writes
                                                       influence-demo/report.html

exit codes: 0 success, 2 bad query or arguments, 1 failure while computing.
The query schema is in the README, section "YAML queries and the command line".
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="influence",
        description="Influence-directed explanations of PyTorch models, from YAML query files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="print the Python traceback of a failure")
    sub = parser.add_subparsers(dest="command", metavar="{run,validate,layers,demo,schema}")

    run = sub.add_parser(
        "run",
        help="run the queries of a YAML file",
        description="Run every query of QUERY.yaml: print a top-k table per query and write "
        "<out>/<name>.json (the query as run and its top-k) and <out>/<name>.pt (the full result, "
        "InfluenceResult.load) for each query with output.save (the default).",
        epilog="example:\n  influence run examples/top_neurons.yaml --out results\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("query", metavar="QUERY.yaml")
    run.add_argument("--device", help="compute on this device for every query (cpu, cuda, cuda:1, ...)")
    run.add_argument("--out", metavar="DIR", help="where result files go (default: out/<QUERY file name>)")
    run.add_argument("--quiet", action="store_true", help="no tables and no progress bar; only the summary line")
    run.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="keep the progress of every class/dataset query in DIR/<name>.ckpt; rerunning resumes (a query's own checkpoint: wins)",
    )
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    validate = sub.add_parser(
        "validate",
        help="check a YAML file without running it",
        description="Check the whole of QUERY.yaml — sections, keys, types, kinds, that files exist — "
        "without importing the model or loading weights or data, and list every callable that running it "
        "would import and call (a query file is trusted like a script: README, Design).",
        epilog="example:\n  influence validate examples/background_audit.yaml\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("query", metavar="QUERY.yaml")
    validate.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    validate.set_defaults(handler=_validate)

    layers = sub.add_parser(
        "layers",
        help="list a model's layers and their output shapes",
        description="List the dotted names (usable as a query's slice), types and output shapes "
        "(for one point) of MODEL's modules, from one forward pass on a random input. MODEL is "
        "'package.module:factory' (with --kwargs), a TorchScript file, or a query YAML (its model "
        "section; the input shape comes from its data).",
        epilog="examples:\n  influence layers influence.synthetic:small_cnn --input-shape 3,16,16\n"
        "  influence layers model.pt --input-shape 3,32,32\n  influence layers examples/top_neurons.yaml\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    layers.add_argument("model", metavar="MODEL")
    layers.add_argument("--kwargs", default="{}", help="factory keyword arguments as JSON, e.g. '{\"classes\": 10}'")
    layers.add_argument("--weights", help="a state_dict file for a factory model (weights_only=True)")
    layers.add_argument("--input-shape", help="one point's shape, e.g. 3,32,32 (default for a query YAML: its data's)")
    layers.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    layers.set_defaults(handler=_layers)

    demo = sub.add_parser(
        "demo",
        help="the built-in example: a planted shortcut, found and measured",
        description="Generate glyph images where class 3 carries a red corner cue in training, train a small "
        "CNN on them and a control CNN without the cue (CPU, seconds), then for both: the top channels for "
        "f_3 - f_8 with standard errors, what they see, a per-class audit of the corner, the essence check "
        "and deletion/insertion curves. Writes report.html (self-contained), report.md, summary.json and "
        "the pictures; needs matplotlib (pip install 'influence-directed[viz]'). With --text: the same on "
        "text, a tiny BERT whose weather sentences carry the cue token 'zq' in training and a control BERT "
        "without it: the token audit, the top neurons for f_weather - f_sport and what they respond to, as "
        "token heatmaps; also needs transformers (pip install 'influence-directed[text]').",
        epilog="examples:\n  influence demo --out demo-report --seed 1\n  influence demo --text\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", metavar="DIR", default=None, help="where the report goes (default: influence-demo, or influence-demo-text with --text)")
    demo.add_argument("--text", action="store_true", help="the text demo: a tiny BERT with a planted cue token (needs transformers)")
    demo.add_argument("--seed", type=int, default=0, help="seeds data, training and random draws (default: 0)")
    demo.add_argument("--quick", action="store_true", help="fewer images (sentences) and quadrature steps (same models and checks)")
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    demo.set_defaults(handler=_demo)

    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of query files (for editors)",
        description="Print the JSON Schema (draft 2020-12) of query files, generated from the declarations that\n"
        "`influence validate` checks a file with. Editors that read it (e.g. through yaml-language-server)\n"
        "complete keys and kinds and mark mistakes as you type; `influence validate` also makes the checks\n"
        "across fields that the schema cannot state. A YAML file points at it with its first line:\n"
        "  # yaml-language-server: $schema=query.schema.json",
        epilog="examples:\n  influence schema --out query.schema.json\n  influence schema | less\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument("--out", metavar="FILE", help="write the schema to FILE instead of printing it")
    schema.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    schema.set_defaults(handler=_schema)
    return parser


def _demo(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise QueryError("--seed", f"must be an int >= 0 (got {args.seed})")
    if getattr(args, "text", False):
        from ..workflows.demo_text import run_text_demo

        run_text_demo(args.out or "influence-demo-text", seed=args.seed, quick=args.quick)
        return 0
    from ..workflows.demo import run_demo

    run_demo(args.out or "influence-demo", seed=args.seed, quick=args.quick)
    return 0


def _schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of query files (JSON, indent 2, sorted keys), or write it to
    ``--out``."""
    from .json_schema import schema_text

    text = schema_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.is_dir():
        raise QueryError("--out", f"{str(out)!r} is a folder; give a file name, e.g. {str(out / 'query.schema.json')!r}")
    if not out.parent.is_dir():
        raise QueryError("--out", f"folder not found: {str(out.parent)!r}")
    atomic_write(out, text.encode("utf-8"))
    print(f"wrote the JSON Schema of query files to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (argparse exits with 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except QueryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failure while computing
        if args.debug:
            traceback.print_exc()
        context = getattr(e, "_influence_context", "")
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"error: {context}{type(e).__name__}: {_one_line(str(e))}{hint}", file=sys.stderr)
        return 1


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- validate ---------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    qfile = load_query_file(args.query)
    names = ", ".join(q.name for q in qfile.queries)
    print(f"ok: {args.query}: {len(qfile.queries)} quer{'y' if len(qfile.queries) == 1 else 'ies'} ({names})")
    # a query file is trusted like a script: say what running it imports and calls
    callables = list(dict.fromkeys(spec for _, spec in qfile.imports))
    print(f"imports and calls: {', '.join(callables) if callables else '(nothing)'}")
    if qfile.model.get("torchscript"):
        print(f"loads TorchScript: {qfile.model['torchscript']}")
    return 0


# --- run ----------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """Under ``torchrun`` every process runs every query on its share of the anchors;
    only rank 0 prints and writes files (the others write to a scratch folder, removed)."""
    started = _distributed.init_from_env()
    try:
        if _distributed.rank() != 0:
            with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
                return _run_queries(args, Path(scratch))
        return _run_queries(args, None)
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _run_queries(args: argparse.Namespace, scratch: Path | None) -> int:
    start = time.perf_counter()
    qfile = load_query_file(args.query)
    out_dir = scratch or (Path(args.out) if args.out else Path("out") / Path(args.query).stem)
    show = not args.quiet and scratch is None
    progress = show and sys.stdout.isatty()
    session = _with_context(lambda: qfile.prepare(device=args.device), "loading the model and data: ")
    # every query is built and checked against the model and data before any runs
    built = [_with_context(lambda: session.build(spec.index), f"query {spec.name!r} ({spec.path}): ") for spec in qfile.queries]
    if args.checkpoint:
        folder = Path(args.checkpoint)
        folder.mkdir(parents=True, exist_ok=True)
        for query in built:
            if not query.spec.pointwise and "checkpoint" not in query.options:
                query.options["checkpoint"] = folder / f"{query.spec.name}.ckpt"
    extras = Extras(out_dir, qfile.source)
    extras.check(built)  # matplotlib present if pictures are asked for, before anything runs
    written: list[Path] = []
    for query in built:
        context = f"query {query.spec.name!r} ({query.spec.path}): "
        results = _with_context(lambda: query.run(progress=progress), context)
        report = _report(query, results)
        analyses, pictures, text = _with_context(lambda: extras.run(query, results), context)
        if show:
            print(_format_report(query, results, report))
            if text:
                print(text)
            print()
        if query.spec.output["save"]:
            written += _save(query, results, report, out_dir, qfile.source, analyses)
        written += pictures
    written += extras.finish()
    elapsed = time.perf_counter() - start
    n = len(built)
    what = f"ran {n} quer{'y' if n == 1 else 'ies'} in {elapsed:.1f} s"
    if written:
        names = ", ".join(p.name for p in written[:6]) + (", ..." if len(written) > 6 else "")
        print(f"{what}; wrote {len(written)} files to {out_dir}{os.sep} ({names})")
    else:
        print(f"{what}; no files written (output.save is false)")
    return 0


def _with_context(fn: Any, context: str) -> Any:
    try:
        return fn()
    except QueryError:
        raise
    except Exception as e:
        e._influence_context = context  # type: ignore[attr-defined]
        raise


def _report(query: BuiltQuery, results: list[InfluenceResult]) -> list[dict[str, Any]]:
    output = query.spec.output
    report = []
    for j, result in enumerate(results):
        entry: dict[str, Any] = {
            "qoi": result.query.get("qoi"),
            "doi": result.query.get("doi"),
            "layer": result.query.get("layer"),
            "samples": result.samples,
            "anchors": result.anchors,
            "pooled": result.pooled,
            "unit_shape": list(result.unit_shape),
            "seed": result.query.get("seed"),
            "top": top_table(result, output["top"]),
        }
        if result.completeness is not None:  # an attribution along a line: its completeness gap
            gaps = result.completeness.reshape(-1)
            entry["completeness"] = {"median": float(gaps.nanmedian()), "max": float(gaps.nan_to_num(nan=0.0).max()), "per_point": gaps.tolist()}
        if result.steps is not None:  # a DoI with tol: the work each anchor took, and how many missed tol
            entry["steps"] = _steps_entry(result)
            entry["tol_missed"] = int(result.query.get("tol_missed", 0))
        if output["regions"]:
            entry["regions"] = region_table(query, result, output["regions"])
        tokens = token_table(query, result)
        if tokens is not None:
            entry["tokens"] = tokens
        report.append(entry)
    return report


def _steps_entry(result: InfluenceResult) -> dict[str, Any]:
    """``{mean, max, per_point}`` of an adaptive result's steps per anchor; for a pooled
    result (whose steps are its members', sorted) a ``histogram`` ``{steps: anchors}``
    instead of ``per_point``."""
    assert result.steps is not None
    steps = result.steps.reshape(-1).long()
    entry: dict[str, Any] = {"mean": float(steps.double().mean()) if steps.numel() else 0.0, "max": int(steps.max()) if steps.numel() else 0}
    if result.pooled:
        values, counts = torch.unique(steps, return_counts=True)
        entry["histogram"] = {str(int(v)): int(c) for v, c in zip(values.tolist(), counts.tolist())}
    else:
        entry["per_point"] = steps.tolist()
    return entry


def _adaptive_line(query: BuiltQuery, entry: dict[str, Any]) -> str:
    """``adaptive steps per anchor: mean 22.4, max 39 (tol 1e-2); 0 anchors missed tol``
    (``samples`` for a noise DoI)."""
    each = query.doi if isinstance(query.doi, PointwiseDoI) else query.doi.each
    what = "samples" if isinstance(each, NoiseDoI) else "steps"
    tol = getattr(each, "tol", None)
    missed = entry["tol_missed"]
    within = f" (tol {_short(tol)})" if tol is not None else ""
    steps = entry["steps"]
    return f"  adaptive {what} per anchor: mean {steps['mean']:.1f}, max {steps['max']}{within}; {missed} anchor{'' if missed == 1 else 's'} missed tol"


def _short(x: float) -> str:
    """A tolerance as ``1e-2``, ``2.5e-3``."""
    mantissa, exponent = f"{x:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _index(index: Any) -> str:
    return "(" + ", ".join(map(str, index)) + ")" if isinstance(index, list) else str(index)


def _format_report(query: BuiltQuery, results: list[InfluenceResult], report: list[dict[str, Any]]) -> str:
    spec = query.spec
    top = spec.output["top"]
    lines = []
    for j, (result, entry) in enumerate(zip(results, report)):
        where = f"layer {entry['layer']!r}" if entry["layer"] else "the input"
        units = "channels" if top["by"] == "channel" else "units"
        if result.pooled:
            over = f"pooled over {result.anchors} points"
        elif result.anchors == 1 or top["anchor"] != "mean":
            over = f"point {0 if top['anchor'] == 'mean' else top['anchor']} of {result.anchors}"
        else:
            over = f"mean over {result.anchors} points"
        label = spec.name if len(results) == 1 else f"{spec.name}[{j}]"
        lines.append(f"{label}: top {len(entry['top'])} {units} of {where} for {entry['qoi']}")
        lines.append(f"  {entry['doi']}, {over}, {result.samples} samples, seed {entry['seed']}")
        if "completeness" in entry:
            gap = entry["completeness"]
            shown = f"{gap['max']:.1e}" if result.pooled else f"median {gap['median']:.1e}, max {gap['max']:.1e}"
            lines.append(f"  completeness gap |Σ attribution − Δq| / |Δq|: {shown}")
        if "steps" in entry:
            lines.append(_adaptive_line(query, entry))
        head = "channel" if top["by"] == "channel" else "unit"
        cells = [(str(row["rank"]), _index(row["index"]), f"{row['value']:+.4e}", f"{row['stderr']:.2e}") for row in entry["top"]]
        w_unit = max([len(head)] + [len(c[1]) for c in cells])
        w_rank = max([4] + [len(c[0]) for c in cells])
        lines.append(f"  {'rank':>{w_rank}}  {head:<{w_unit}}  {'influence':>11}  {'stderr':>8}")
        for rank, unit, value, stderr in cells:
            lines.append(f"  {rank:>{w_rank}}  {unit:<{w_unit}}  {value:>11}  {stderr:>8}")
        for region in entry.get("regions", []):
            if region is entry["regions"][0]:
                w = max(6, *(len(r["region"]) for r in entry["regions"]))
                lines.append(f"  {'region':<{w}}  {'sum':>11}  {'share of |influence|':>20}  units")
            lines.append(f"  {region['region']:<{w}}  {region['sum']:>+11.4e}  {100 * region['share']:>19.1f}%  {region['units']}")
        if entry.get("tokens"):
            lines += _format_tokens(entry["tokens"], top["k"])
    return "\n".join(lines)


_MAX_SENTENCES = 5


def _format_tokens(sentences: list[dict[str, Any]], k: int) -> list[str]:
    """Per explained sentence (the first few), its ``k`` tokens of largest |attribution|."""
    lines = ["  top tokens by |attribution| (padding dropped; per token: Σ over its features):"]
    for i, sentence in enumerate(sentences[:_MAX_SENTENCES]):
        order = sorted(range(len(sentence["values"])), key=lambda j: -abs(sentence["values"][j]))[:k]
        shown = ", ".join(f"{_token(sentence['tokens'][j])} {sentence['values'][j]:+.3g}" for j in order)
        lines.append(f"  sentence {i} (row {sentence['row']}): {shown or '(no tokens)'}")
    if len(sentences) > _MAX_SENTENCES:
        lines.append(f"  ... and {len(sentences) - _MAX_SENTENCES} more sentences in the JSON")
    return lines


def _token(text: str) -> str:
    """A token for the terminal: quoted, or ``#id`` as it is."""
    return text if text.startswith("#") and text[1:].isdigit() else repr(text)


def _save(
    query: BuiltQuery, results: list[InfluenceResult], report: list[dict[str, Any]], out_dir: Path, source: str, analyses: dict[str, Any] | None = None
) -> list[Path]:
    """``<name>.json`` (the query as run, per QoI its top-k and regions, and the audit,
    essence check and curves asked for) and the full results, ``<name>.pt``
    (``<name>.<j>.pt`` for the j-th of a list of QoIs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = query.spec.name
    files = []
    for j, (result, entry) in enumerate(zip(results, report)):
        path = out_dir / (f"{name}.pt" if len(results) == 1 else f"{name}.{j}.pt")
        result.save(path)
        entry["file"] = path.name
        files.append(path)
    payload = {"name": name, "query_file": source, "query": query.spec.echo(), "results": report, **(analyses or {})}
    json_path = out_dir / f"{name}.json"
    atomic_write(json_path, (json.dumps(payload, indent=2, default=str) + "\n").encode("utf-8"))
    return [json_path, *files]


# --- layers -----------------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.replace("x", ",").replace("(", "").replace(")", "").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise QueryError("--input-shape", f"must be positive ints separated by commas, e.g. 3,32,32 (got {text!r})")
    return shape


def _layers(args: argparse.Namespace) -> int:
    from . import checks, loading
    from ._layers import describe_layers, format_layers

    spec = args.model
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    example = None
    if spec.lower().endswith((".yaml", ".yml")):
        qfile = load_query_file(spec)
        model = load_model(qfile.model, qfile.folder)
        if shape is None:
            from doi._points import rows as points_rows

            example = points_rows(load_data(qfile.data, qfile.folder, model).x, slice(0, 1))
    elif os.path.exists(spec) or ":" not in spec:
        path = Path(spec)
        if not path.is_file():
            raise QueryError("MODEL", f"{spec!r} is neither a file nor an import path 'package.module:factory'")
        model = load_model({"torchscript": path, "factory": None, "kwargs": {}, "weights": None}, Path.cwd())
    else:
        checks.ImportPath()(spec, "MODEL", checks.Context(Path.cwd()))
        try:
            kwargs = json.loads(args.kwargs)
        except json.JSONDecodeError as e:
            raise QueryError("--kwargs", f"is not valid JSON ({e.msg}); write e.g. '{{\"classes\": 10}}'") from None
        if not isinstance(kwargs, dict):
            raise QueryError("--kwargs", f"must be a JSON object of keyword arguments (got {type(kwargs).__name__})")
        fn = loading.import_callable(spec, "MODEL", Path.cwd())
        model = loading.call_factory(fn, kwargs, "--kwargs")
        if not isinstance(model, torch.nn.Module):
            raise QueryError("MODEL", f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
        if args.weights:
            weights = checks.FilePath()(args.weights, "--weights", checks.Context(Path.cwd()))
            loading.fit_weights(model, loading.read_state_dict(weights, "--weights"), "--weights")
        model.eval()
    if shape is not None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
        example = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    try:
        if isinstance(example, (dict, tuple)):  # model(**inputs) / model(*inputs): the hooks see the model called so
            layers = _describe_structured(model, example, describe_layers)
        else:
            layers = describe_layers(model, example)
    except Exception as e:
        if shape is None:
            raise
        raise QueryError("--input-shape", f"the model cannot run on an input of shape {shape}: {type(e).__name__}: {_one_line(str(e), 200)}") from None
    what = "TorchScript " if isinstance(model, torch.jit.ScriptModule) else ""
    if isinstance(example, (dict, tuple)):
        from doi._points import describe as points_describe

        on = f" on one input {points_describe(example)}"
    else:
        on = f" on one input of shape {tuple(example.shape[1:])}" if example is not None else ""
    print(f"{what}{type(model).__name__ if not what else getattr(model, 'original_name', 'model')}{on}:")
    print(format_layers(layers))
    if example is None:
        print("(output shapes need an input: give --input-shape, e.g. --input-shape 3,32,32)")
    return 0


def _describe_structured(model: torch.nn.Module, example: Any, describe: Any) -> Any:
    """``describe(model, example)`` for inputs given as a mapping or tuple: the model's
    ``forward`` takes them as ``model(**example)`` / ``model(*example)`` meanwhile."""
    from slices._realisations import call

    forward = model.forward
    model.forward = lambda packed: call(forward, packed)  # type: ignore[method-assign]
    try:
        return describe(model, example)
    finally:
        del model.forward
