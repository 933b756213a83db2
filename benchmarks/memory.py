"""Peak memory of influence queries: it depends on the batch size, not on the number of
samples per anchor or on the size of the population.

    python benchmarks/memory.py [--device cuda] [--quick]

Each measurement runs in its own subprocess and reports the peak resident set size
(``ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``) and its growth during
the query (peak after the query minus peak before it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(kind: str, size: int, device_name: str) -> dict[str, float]:
    """Run one query and return its memory figures."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    import torch

    from doi import DatasetDoI, LineDoI
    from influence import input_influence, internal_influence
    from models import resnet
    from qoi import ClassQoI
    from slices import Slice

    torch.set_num_threads(2)
    device = torch.device(device_name)
    g = torch.Generator().manual_seed(0)
    if kind.startswith("dataset"):
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(device)
        x = torch.randn(size, 16, generator=g)
        options: dict = {}
        if kind == "dataset-checkpoint":  # a checkpoint after every chunk, and non-finite anchors skipped
            import tempfile

            folder = tempfile.TemporaryDirectory()  # removed when the child ends
            options = {"checkpoint": os.path.join(folder.name, "q.ckpt"), "checkpoint_every": 0, "nonfinite": "skip"}
        run = lambda: input_influence(model, ClassQoI(1), DatasetDoI(x), batch_size=256, device=device, seed=0, **options)  # noqa: E731
    else:
        model = resnet().to(device)
        x = torch.randn(8, 3, 32, 32, generator=g).to(device)
        slc = Slice(model, "stage2")
        if kind == "slice-line":
            base = slc.h(torch.zeros_like(x[:1])).detach()
            run = lambda: internal_influence(slc, ClassQoI(1), LineDoI(base, size, space="slice"), x, batch_size=64, multiply_activation=True, seed=0)  # noqa: E731
        else:
            run = lambda: internal_influence(slc, ClassQoI(1), LineDoI(0.0, size, space="input"), x, batch_size=64, seed=0)  # noqa: E731
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _peak_rss_mib()
    run()
    after = _peak_rss_mib()
    out = {"peak_rss_mib": after, "growth_mib": after - before}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure(kind: str, size: int, device: str) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(size), "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smaller populations (for CI)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.device)))
        return
    small_pop, large_pop = (2_000, 20_000) if args.quick else (20_000, 200_000)
    plan = [
        ("slice-line", "slice-space LineDoI at 'stage2', steps per anchor", 32, 256),
        ("input-line", "input-space LineDoI at 'stage2', steps per anchor", 32, 256),
        ("dataset", "DatasetDoI over N points (MLP, 16 features)", small_pop, large_pop),
        ("dataset-checkpoint", "the same, checkpoint after every chunk, nonfinite='skip'", small_pop, large_pop),
    ]
    print(f"device {args.device}; each figure from its own subprocess\n")
    print("| query | small | large | peak RSS small (MiB) | peak RSS large (MiB) | ratio | growth small | growth large |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, label, small, large in plan:
        a, b = measure(kind, small, args.device), measure(kind, large, args.device)
        ratio = b["peak_rss_mib"] / a["peak_rss_mib"]
        row = f"| {label} | {small} | {large} | {a['peak_rss_mib']:.0f} | {b['peak_rss_mib']:.0f} | {ratio:.3f} | {a['growth_mib']:.0f} | {b['growth_mib']:.0f} |"
        if "cuda_peak_mib" in a:
            row += f" CUDA peak {a['cuda_peak_mib']:.0f} → {b['cuda_peak_mib']:.0f} MiB ({b['cuda_peak_mib'] / a['cuda_peak_mib']:.3f}) |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
