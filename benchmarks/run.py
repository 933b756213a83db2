"""Speed of every method against a bare forward/backward loop doing the same work, and
against Captum, in one process and one run.

    python benchmarks/run.py [--quick] [--device cuda] [--threads 2] [--reps 9]
    python benchmarks/run.py --only-sequence   # the sequence-attribution table alone
    python benchmarks/run.py --only-adaptive   # the adaptive-precision table alone

Bare loops (what an expert would write by hand for the same samples):
  L0  one forward/backward per batch of points
  L1  forward + backward to the input over all samples
  L2  h once per anchor (no grad), then forward/backward of g over the samples
  L3  per batch: h without grad, then forward/backward of g from the cut
  LK  one forward, K backward passes (retain_graph) for K quantities

The sequence-attribution table (:mod:`sequence`): one QoI per generated token of a
continuation on a tiny GPT-2, sharing one forward pass (teacher forcing), against the
step-by-step loop of inseq (one prefix forward per generated token) and Captum's
``LLMGradientAttribution``.

The adaptive-precision table (:mod:`adaptive`): ``LineDoI(0, tol=...)`` against uniform
Gauss–Legendre and midpoint rules at equal worst-anchor completeness gap, on a ReLU and a
softplus CNN: gradient rows and wall time.

Each repetition runs ours, the bare loop and Captum back to back (interleaved, in an
order rotated from one repetition to the next), after a warm-up; the table gives medians
and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive import FULL as ADAPTIVE_FULL  # noqa: E402
from adaptive import QUICK as ADAPTIVE_QUICK  # noqa: E402
from adaptive import TINY as ADAPTIVE_TINY  # noqa: E402
from adaptive import adaptive_table  # noqa: E402
from models import mlp, resnet  # noqa: E402
from sequence import FULL, QUICK, TINY, sequence_table  # noqa: E402

from doi import ClassDoI, LineDoI, NoiseDoI, PointDoI, nodes_and_weights  # noqa: E402
from influence import input_influence, internal_influence  # noqa: E402
from qoi import ClassQoI  # noqa: E402
from slices import Slice  # noqa: E402


@dataclass
class Case:
    name: str
    loop: str
    ours: Callable[[], Any]
    bare: Callable[[], Any]
    captum: Callable[[], Any] | None
    same_as_captum: bool = True  # the two compute the same numbers (not Monte Carlo)


def _values(out: Any) -> Tensor:
    """Our results or Captum's, as one float64 tensor on the CPU."""
    if isinstance(out, (list, tuple)):
        return torch.cat([_values(o).reshape(1, -1) for o in out])
    if hasattr(out, "values") and isinstance(out.values, Tensor):
        out = out.values
    return out.detach().double().cpu()


def disagreement(got: Any, reference: Any) -> float:
    """``max |got − reference| / max |reference|``."""
    a, b = _values(got), _values(reference).reshape(_values(got).shape)
    return float((a - b).abs().max() / b.abs().max())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


# --- bare loops -------------------------------------------------------------------------


def bare_line_input(model: nn.Module, x: Tensor, target: int, steps: int, batch: int) -> Tensor:
    """L1: integrated gradients by hand (Gauss–Legendre nodes, zero baseline)."""
    alpha_np, weight_np = nodes_and_weights("gauss-legendre", steps)
    alpha = torch.tensor(alpha_np, dtype=x.dtype, device=x.device)
    weight = torch.tensor(weight_np, dtype=x.dtype, device=x.device)
    rows = x.shape[0] * steps
    total = torch.zeros_like(x)
    for start in range(0, rows, batch):
        r = torch.arange(start, min(start + batch, rows), device=x.device)
        a, k = r // steps, r % steps
        points = (x[a] * alpha[k].view(-1, *([1] * (x.ndim - 1)))).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(points)[:, target].sum(), points)
        total.index_add_(0, a, grad * weight[k].view(-1, *([1] * (x.ndim - 1))))
    return total * x


def bare_noise_input(model: nn.Module, x: Tensor, target: int, samples: int, sigma: float, batch: int) -> Tensor:
    """L1: SmoothGrad by hand."""
    rows = x.shape[0] * samples
    total = torch.zeros_like(x)
    for start in range(0, rows, batch):
        r = torch.arange(start, min(start + batch, rows), device=x.device)
        a = r // samples
        points = (x[a] + sigma * torch.randn_like(x[a])).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(points)[:, target].sum(), points)
        total.index_add_(0, a, grad)
    return total / samples


def bare_point(model: nn.Module, x: Tensor, target: int, batch: int) -> Tensor:
    """L0: saliency by hand."""
    grads = []
    for start in range(0, x.shape[0], batch):
        points = x[start : start + batch].clone().requires_grad_(True)
        grads.append(torch.autograd.grad(model(points)[:, target].sum(), points)[0])
    return torch.cat(grads)


def bare_line_layer_input_path(h: nn.Module, g: nn.Module, x: Tensor, target: int, steps: int, batch: int) -> Tensor:
    """L3: gradient at the cut along the input-space path."""
    alpha_np, weight_np = nodes_and_weights("gauss-legendre", steps)
    alpha = torch.tensor(alpha_np, dtype=x.dtype, device=x.device)
    weight = torch.tensor(weight_np, dtype=x.dtype, device=x.device)
    rows = x.shape[0] * steps
    total: Tensor | None = None
    for start in range(0, rows, batch):
        r = torch.arange(start, min(start + batch, rows), device=x.device)
        a, k = r // steps, r % steps
        with torch.no_grad():
            z = h(x[a] * alpha[k].view(-1, *([1] * (x.ndim - 1))))
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(g(z)[:, target].sum(), z)
        if total is None:
            total = torch.zeros((x.shape[0], *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        total.index_add_(0, a, grad * weight[k].view(-1, *([1] * (grad.ndim - 1))))
    assert total is not None
    return total


def bare_line_layer_slice_path(h: nn.Module, g: nn.Module, x: Tensor, target: int, steps: int, batch: int) -> Tensor:
    """L2: h once per anchor, the path between h(0) and h(x) at the cut, times the gap."""
    alpha_np, weight_np = nodes_and_weights("gauss-legendre", steps)
    with torch.no_grad():
        zx, z0 = h(x), h(torch.zeros_like(x[:1]))
    alpha = torch.tensor(alpha_np, dtype=x.dtype, device=x.device)
    weight = torch.tensor(weight_np, dtype=x.dtype, device=x.device)
    rows = x.shape[0] * steps
    total = torch.zeros_like(zx)
    shape = [1] * (zx.ndim - 1)
    for start in range(0, rows, batch):
        r = torch.arange(start, min(start + batch, rows), device=x.device)
        a, k = r // steps, r % steps
        z = torch.lerp(z0.expand_as(zx[a]), zx[a], alpha[k].view(-1, *shape)).requires_grad_(True)
        (grad,) = torch.autograd.grad(g(z)[:, target].sum(), z)
        total.index_add_(0, a, grad * weight[k].view(-1, *shape))
    return total * (zx - z0)


def bare_multi(model: nn.Module, x: Tensor, targets: int, steps: int, batch: int) -> list[Tensor]:
    """LK: one forward, K backward passes, for K classes' integrated gradients."""
    alpha_np, weight_np = nodes_and_weights("gauss-legendre", steps)
    alpha = torch.tensor(alpha_np, dtype=x.dtype, device=x.device)
    weight = torch.tensor(weight_np, dtype=x.dtype, device=x.device)
    rows = x.shape[0] * steps
    totals = [torch.zeros_like(x) for _ in range(targets)]
    for start in range(0, rows, batch):
        r = torch.arange(start, min(start + batch, rows), device=x.device)
        a, k = r // steps, r % steps
        points = (x[a] * alpha[k].view(-1, *([1] * (x.ndim - 1)))).requires_grad_(True)
        out = model(points)
        w = weight[k].view(-1, *([1] * (x.ndim - 1)))
        for c in range(targets):
            (grad,) = torch.autograd.grad(out[:, c].sum(), points, retain_graph=c < targets - 1)
            totals[c].index_add_(0, a, grad * w)
    return [t * x for t in totals]


# --- cases ------------------------------------------------------------------------------


def build_cases(model: nn.Module, layer: str, h: nn.Module, g: nn.Module, x: Tensor, population: tuple[Tensor, Tensor], args: argparse.Namespace) -> list[Case]:
    from captum.attr import IntegratedGradients, InternalInfluence, LayerIntegratedGradients, NoiseTunnel, Saliency

    steps, batch, target = args.steps, args.batch, 3
    opts = {"seed": 0, "batch_size": batch, "affine_prefix": not args.no_affine_prefix}
    layer_module = dict(model.named_modules())[layer]
    slc = Slice(model, layer)
    many = [ClassQoI(c) for c in range(10)]
    px, py = population
    members = px[py == target]
    zero_h = slc.h(torch.zeros_like(x[:1])).detach()
    line = LineDoI(steps=steps)
    per_point_noise = max(1, batch // x.shape[0])

    def captum_pooled() -> Tensor:
        ig = IntegratedGradients(model)
        return ig.attribute(members, target=target, n_steps=args.pool_steps, method="gausslegendre", internal_batch_size=batch).mean(0)

    cases = [
        Case(
            "integrated gradients (input)", "L1",
            lambda: input_influence(model, ClassQoI(target), line, x, multiply_activation=True, **opts),
            lambda: bare_line_input(model, x, target, steps, batch),
            lambda: IntegratedGradients(model).attribute(x, target=target, n_steps=steps, method="gausslegendre", internal_batch_size=batch),
        ),
        Case(
            "SmoothGrad, NoiseDoI random (Monte Carlo)", "L1",
            lambda: input_influence(model, ClassQoI(target), NoiseDoI(0.1, steps, "random"), x, **opts),
            lambda: bare_noise_input(model, x, target, steps, 0.1, batch),
            lambda: NoiseTunnel(Saliency(model)).attribute(
                x, nt_type="smoothgrad", nt_samples=steps, nt_samples_batch_size=per_point_noise, stdevs=0.1, target=target, abs=False
            ),
            same_as_captum=False,
        ),
        Case(
            "saliency, PointDoI", "L0",
            lambda: input_influence(model, ClassQoI(target), PointDoI(), px, **opts),
            lambda: bare_point(model, px, target, batch),
            lambda: [Saliency(model).attribute(px[i : i + batch], target=target, abs=False) for i in range(0, px.shape[0], batch)],
        ),
        Case(
            f"input-space line at {layer!r}", "L3",
            lambda: internal_influence(slc, ClassQoI(target), line, x, **opts),
            lambda: bare_line_layer_input_path(h, g, x, target, steps, batch),
            lambda: InternalInfluence(model, layer_module).attribute(x, target=target, n_steps=steps, method="gausslegendre", internal_batch_size=batch),
        ),
        Case(
            f"slice-space line at {layer!r}, × activation", "L2",
            lambda: internal_influence(slc, ClassQoI(target), LineDoI(zero_h, steps, space="slice"), x, multiply_activation=True, **opts),
            lambda: bare_line_layer_slice_path(h, g, x, target, steps, batch),
            lambda: LayerIntegratedGradients(model, layer_module).attribute(x, target=target, n_steps=steps, method="gausslegendre", internal_batch_size=batch),
        ),
        Case(
            f"ClassDoI over {members.shape[0]} points, each=LineDoI({args.pool_steps})", "L1",
            lambda: input_influence(model, ClassQoI(target), ClassDoI(population, target, each=LineDoI(steps=args.pool_steps)), multiply_activation=True, **opts),
            lambda: bare_line_input(model, members, target, args.pool_steps, batch).mean(0),
            captum_pooled,
        ),
        Case(
            "10 classes in one query (IG)", "LK",
            lambda: input_influence(model, many, line, x, multiply_activation=True, **opts),
            lambda: bare_multi(model, x, 10, steps, batch),
            lambda: [IntegratedGradients(model).attribute(x, target=c, n_steps=steps, method="gausslegendre", internal_batch_size=batch) for c in range(10)],
        ),
    ]
    return cases


def measure(cases: list[Case], exact: list[Case], reps: int, device: torch.device, with_captum: bool) -> list[dict[str, Any]]:
    """Time each case; ``exact`` holds the same cases in float64, whose bare loop is the
    reference the float32 results are compared with."""
    rows = []
    for case, case64 in zip(cases, exact):
        fns = {"ours": case.ours, "bare": case.bare}
        if with_captum and case.captum is not None:
            fns["captum"] = case.captum
        outputs = {key: fn() for key, fn in fns.items()}  # warm-up
        deterministic = case.same_as_captum
        agree = disagreement(outputs["ours"], outputs["captum"]) if "captum" in outputs and deterministic else None
        errors: dict[str, float] = {}
        if deterministic:
            reference = case64.bare()
            errors = {f"{k}_err": disagreement(outputs[k], reference) for k in ("ours", "captum") if k in outputs}
        times: dict[str, list[float]] = {k: [] for k in fns}
        keys = list(fns)
        for rep in range(reps):  # interleaved, the order rotated so that none always follows another
            for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
                times[key].append(_timed(fns[key], device))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"case": case.name, "loop": case.loop, "agree": agree, **errors, **med})
        print(_format_row(rows[-1]), flush=True)
    return rows


def _format_row(row: dict[str, Any]) -> str:
    ours, bare = row["ours"], row["bare"]
    captum = row.get("captum")
    text = f"| {row['case']:<46} | {row['loop']} | {ours * 1e3:9.1f} | {bare * 1e3:9.1f} | {ours / bare:5.2f}× |"
    if captum is not None:
        text += f" {captum * 1e3:9.1f} | {captum / bare:5.2f}× | {captum / ours:5.2f}× |"
    else:
        text += "         – |      – |      – |"
    for key in ("agree", "ours_err", "captum_err"):
        value = row.get(key)
        text += f" {value:.1e} |" if value is not None else "       – |"
    return text


HEADER = (
    "| case | loop | ours ms | bare ms | ours/bare | Captum ms | Captum/bare | Captum/ours | vs Captum | ours err | Captum err |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def quadrature_table(device: torch.device) -> None:
    """Completeness error Σ_i |Σ attributions_i − Δ_i| / Σ_i |Δ_i| (``Δ_i = f(x_i) −
    f(0)``, 16 points) against steps for each rule, on a smooth (softplus) network."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.Softplus(), nn.Linear(64, 64), nn.Softplus(), nn.Linear(64, 3)).double().to(device)
    x = 2.0 * torch.randn(16, 16, dtype=torch.float64, device=device)
    with torch.no_grad():
        gap = net(x)[:, 0] - net(torch.zeros_like(x))[:, 0]
    rules = ["gauss-legendre", "midpoint", "trapezoid", "riemann-left", "riemann-right"]
    steps_list = [2, 4, 8, 16, 32, 64, 128, 256]
    print("\nCompleteness error Σ|Σ attr − Δf| / Σ|Δf| over 16 points, by rule and steps (softplus MLP, float64):")
    print("| steps | " + " | ".join(rules) + " |")
    print("|---|" + "---|" * len(rules))
    first_below: dict[str, int | None] = {r: None for r in rules}
    for steps in steps_list:
        cells = []
        for rule in rules:
            r = input_influence(net, ClassQoI(0), LineDoI(0.0, steps, rule), x, multiply_activation=True, seed=0)
            err = float((r.values.sum(1).to(device) - gap).abs().sum() / gap.abs().sum())
            if err <= 1e-3 and first_below[rule] is None:
                first_below[rule] = steps
            cells.append(f"{err:.1e}")
        print(f"| {steps} | " + " | ".join(cells) + " |")
    print("steps needed for error ≤ 1e-3: " + ", ".join(f"{r}: {first_below[r]}" for r in rules))


def fixed_cost_table(device: torch.device, reps: int) -> None:
    """The fixed cost of one call: saliency on 64 points of a small MLP (16→64→64→10), where
    a batch is a fraction of a millisecond of work, against the bare forward/backward and
    Captum's ``Saliency``; medians of interleaved calls in a rotated order."""
    from captum.attr import Saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(64, 16, device=device)

    def bare() -> Tensor:
        points = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(points)[:, 3].sum(), points)[0]

    fns = {
        "ours": lambda: input_influence(model, ClassQoI(3), PointDoI(), x, batch_size=64),
        "bare": bare,
        "captum": lambda: Saliency(model).attribute(x.clone().requires_grad_(True), target=3, abs=False),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for fn in fns.values():  # warm-up
        for _ in range(20):
            fn()
    for rep in range(reps):
        for key in keys[rep % 3 :] + keys[: rep % 3]:
            times[key].append(_timed(fns[key], device))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"\nFixed cost per call: saliency on 64 points of a 16→64→64→10 MLP ({reps} interleaved calls each, medians):")
    print("| ours ms | bare ms | ours − bare ms | Captum ms |\n|---|---|---|---|")
    print(f"| {med['ours']:.3f} | {med['bare']:.3f} | {med['ours'] - med['bare']:.3f} | {med['captum']:.3f} |")


def fast_mode_table(device: torch.device, reps: int, compile_too: bool, anchors: int, steps: int) -> None:
    """The fast mode against the default float32 query on the benchmark CNN: integrated
    gradients at the input and a slice-space line at ``stage2``, ``autocast=bfloat16``
    (and ``compile``); speed, the error against float64 (``max |·−ref| / max |ref|``) and
    the median completeness gap that the result reports."""
    torch.manual_seed(0)
    model = resnet().to(device)
    model64 = copy.deepcopy(model).double()
    x = torch.randn(anchors, 3, 32, 32, device=device)
    with torch.no_grad():
        zero_h = Slice(model, "stage2").h(torch.zeros_like(x[:1]))
    variants: dict[str, dict[str, Any]] = {"float32": {}, "bf16 autocast": {"autocast": torch.bfloat16}}
    if device.type == "cuda":
        variants["float32, tf32 off"] = {"tf32": False}
        variants["float32, tf32 on"] = {"tf32": True}
    if compile_too:
        variants["bf16 autocast + compile"] = {"autocast": torch.bfloat16, "compile": True}
    cases = {
        "integrated gradients (input)": (lambda m: Slice(m, None), lambda z: LineDoI(steps=steps)),
        "slice-space line at 'stage2'": (lambda m: Slice(m, "stage2"), lambda z: LineDoI(z, steps=steps, space="slice")),
    }
    print(f"\nPrecision on the residual CNN, {anchors} anchors × {steps} steps, batch 64 (medians):")
    print("| case | precision | ms | speed vs float32 | err vs float64 | median completeness gap |\n|---|---|---|---|---|---|")
    for name, (make_slice, make_doi) in cases.items():
        reference = internal_influence(make_slice(model64), ClassQoI(3), make_doi(zero_h.double()), x.double(), multiply_activation=True, batch_size=64)
        timed: dict[str, float] = {}
        for label, options in variants.items():
            run = lambda: internal_influence(make_slice(model), ClassQoI(3), make_doi(zero_h), x, multiply_activation=True, batch_size=64, **options)  # noqa: E731
            result = run()  # warm-up (and compilation)
            timed[label] = statistics.median(_timed(run, device) for _ in range(reps))
            err = disagreement(result, reference)
            gap = float(result.completeness.median()) if result.completeness is not None else float("nan")
            print(f"| {name} | {label} | {timed[label] * 1e3:.1f} | {timed['float32'] / timed[label]:.2f}× | {err:.1e} | {gap:.1e} |", flush=True)


def _split(model: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """The cut of each benchmark model, and its two halves for the bare loops."""
    if isinstance(model, nn.Sequential):  # the MLP: after the second hidden layer
        return "4", model[:5], model[5:]
    h = nn.Sequential(model.stem, model.stage1, model.stage2)
    return "stage2", h, nn.Sequential(model.stage3, model.pool, nn.Flatten(), model.fc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller population")
    parser.add_argument("--tiny", action="store_true", help="a smoke run in seconds (for the test suite)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--models", default="resnet,mlp")
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--cases", default="", help="only cases whose name contains one of these comma-separated words")
    parser.add_argument("--no-quadrature", action="store_true", help="skip the completeness-vs-steps table")
    parser.add_argument("--no-affine-prefix", action="store_true", help="run ours with affine_prefix=False (the engine's loop alone)")
    parser.add_argument("--no-fixed-cost", action="store_true", help="skip the fixed-cost-per-call table")
    parser.add_argument("--no-precision", action="store_true", help="skip the fast-mode (bf16 autocast) table")
    parser.add_argument("--compile", action="store_true", help="also time the fast mode with torch.compile of g")
    parser.add_argument("--no-sequence", action="store_true", help="skip the sequence-attribution (GPT-2 continuation) table")
    parser.add_argument("--only-sequence", action="store_true", help="run the sequence-attribution table alone")
    parser.add_argument("--no-adaptive", action="store_true", help="skip the adaptive-precision table (LineDoI(tol) against uniform rules)")
    parser.add_argument("--only-adaptive", action="store_true", help="run the adaptive-precision table alone")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    args.steps, args.batch, anchors = 32, 64, 8
    population, args.pool_steps = 512, 4
    reps = args.reps or 9
    if args.quick:
        reps, population = args.reps or 6, 128
    if args.tiny:
        reps, population, args.steps, args.batch, anchors = 1, 16, 4, 8, 2
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, {reps} repetitions (medians)")
    sequence_setting = TINY if args.tiny else QUICK if args.quick else FULL
    adaptive_setting = ADAPTIVE_TINY if args.tiny else ADAPTIVE_QUICK if args.quick else ADAPTIVE_FULL
    if args.only_adaptive:
        adaptive_table(reps, adaptive_setting)
        return
    if args.only_sequence:
        sequence_table(device, reps, sequence_setting, _timed, disagreement, not args.no_captum)
        return
    if not args.no_fixed_cost:  # first, in a process that has not yet run the large models
        fixed_cost_table(device, 30 if args.tiny else 500)
    g = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        shape: tuple[int, ...] = (3, 32, 32) if not args.tiny else (3, 16, 16)
        if name == "resnet":
            model = resnet().to(device)
        else:
            model = mlp().to(device) if not args.tiny else mlp(features=3 * 16 * 16, hidden=32).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        model64 = copy.deepcopy(model).double()
        x = torch.randn(anchors, *shape, generator=g).to(device)
        others = torch.randint(0, 9, (population,), generator=g)
        py = torch.cat([torch.full((population,), 3), others + (others >= 3).long()]).to(device)  # `population` points of class 3
        px = torch.randn(py.shape[0], *shape, generator=g).to(device)
        layer = _split(model)[0]
        print(f"\n### {name}: {anchors} anchors × {args.steps} steps, batch {args.batch}, cut at {layer!r}\n")
        print(HEADER)
        cases = build_cases(model, *_split(model), x, (px, py), args)
        exact = build_cases(model64, *_split(model64), x.double(), (px.double(), py), args)
        wanted = [w for w in args.cases.split(",") if w]
        keep = [i for i, c in enumerate(cases) if not wanted or any(w in c.name for w in wanted)]
        measure([cases[i] for i in keep], [exact[i] for i in keep], reps, device, not args.no_captum)
    if not args.no_precision and "resnet" in args.models.split(","):
        fast_mode_table(device, reps, args.compile, anchors, args.steps)
    if not args.no_sequence:
        sequence_table(device, reps, sequence_setting, _timed, disagreement, not args.no_captum)
    if not args.no_quadrature:
        quadrature_table(device)
    if not args.no_adaptive:
        adaptive_table(reps, adaptive_setting)


if __name__ == "__main__":
    main()
