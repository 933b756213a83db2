"""Sequence attribution on a causal language model: the matrix of source and earlier
target tokens × generated tokens that tools such as inseq draw.

Ours: ``ContinuationQoI(target).per_token()`` as one query at the word embeddings of the
prompt followed by the continuation (teacher forcing): one forward pass and ``T``
backward passes per sample row. The step-by-step loop (what inseq does, written by hand):
for each generated token ``y_t``, forward the prefix ``x, y_<t`` and backward
``log p(y_t | x, y_<t)`` to its embeddings: ``T`` forwards and ``T`` backwards per row.
Captum's ``LLMGradientAttribution`` runs the same step-by-step loop, one sentence at a
time, and attributes to the prompt tokens only.

Both gradient methods are the attribution form (``multiply_activation=True``):

* saliency matrix: ``PointDoI()``, gradient × embedding (Captum:
  ``LayerGradientXActivation``);
* integrated gradients matrix: a slice-space line from the embeddings of pad tokens at
  every position (Gauss–Legendre nodes). Captum's ``LayerIntegratedGradients`` under
  ``LLMGradientAttribution`` keeps the earlier generated tokens at their own embeddings
  (it only interpolates the prompt), so its numbers are compared with ours from that
  baseline (pad tokens on the prompt, the continuation's own tokens after it); its
  timing does the same work as ours per sample either way.

The quantity is the log-probability of each generated token (what ``ContinuationQoI``
evaluates and what Captum attributes).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from doi import LineDoI, PointDoI, nodes_and_weights
from influence import internal_influence
from qoi import ContinuationQoI
from slices import Slice

PAD = 0


@dataclass(frozen=True)
class Setting:
    sentences: int = 4
    prompt: int = 16
    generated: int = 8
    layers: int = 4
    width: int = 128
    heads: int = 4
    vocab: int = 1024
    steps: int = 32
    batch: int = 64


FULL = Setting()
QUICK = Setting(sentences=2, steps=8)
TINY = Setting(sentences=2, prompt=8, generated=8, layers=2, width=32, heads=2, vocab=128, steps=4, batch=8)


def tiny_gpt2(setting: Setting, seed: int = 0) -> nn.Module:
    """A GPT-2 with random weights, float32, eval mode, frozen."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=setting.vocab, n_positions=max(64, setting.prompt + setting.generated),
        n_embd=setting.width, n_layer=setting.layers, n_head=setting.heads, bos_token_id=PAD, eos_token_id=PAD,
    )
    lm = transformers.GPT2LMHeadModel(config).float().eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm


class IdTokenizer:
    """The least a tokenizer must do for Captum's ``TextTokenInput`` and
    ``LLMGradientAttribution``, offline: the text ``"w12 w5 w7"`` is the ids 12, 5, 7."""

    def encode(self, text: str, return_tensors: str | None = None, add_special_tokens: bool = True) -> Any:
        ids = [int(word[1:]) for word in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def decode(self, ids: Any) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return " ".join(f"w{i}" for i in ([ids] if isinstance(ids, int) else ids))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"w{i}" for i in ids]

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [int(t[1:]) for t in tokens]

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True, **_: Any) -> dict[str, Any]:
        ids, offsets, start = [], [], 0
        for word in text.split(" "):
            if word:
                ids.append(int(word[1:]))
                offsets.append((start, start + len(word)))
            start += len(word) + 1
        return {"input_ids": ids, "offset_mapping": offsets} if return_offsets_mapping else {"input_ids": ids}


# --- the step-by-step loop (inseq's way, by hand) ----------------------------------------


def loop_saliency(lm: nn.Module, ids: Tensor, target: Tensor, batch: int) -> list[Tensor]:
    """For each generated token: forward the prefix, backward its log-probability to the
    prefix's embeddings; gradient × embedding, zero after the prefix. ``T`` results of
    shape ``(N, L, E)``."""
    wte = lm.transformer.wte
    count, length = target.shape[0], ids.shape[1]
    prompt = length - count
    with torch.no_grad():
        emb = wte(ids)
    out = []
    for t in range(count):
        n = prompt + t
        total = torch.zeros_like(emb)
        for start in range(0, ids.shape[0], batch):
            z = emb[start : start + batch, :n].clone().requires_grad_(True)
            logits = lm(inputs_embeds=z).logits[:, -1]
            q = torch.log_softmax(logits, -1)[:, target[t]]
            (grad,) = torch.autograd.grad(q.sum(), z)
            total[start : start + batch, :n] = grad * z.detach()
        out.append(total)
    return out


def loop_integrated_gradients(lm: nn.Module, ids: Tensor, baseline_ids: Tensor, target: Tensor, steps: int, batch: int) -> list[Tensor]:
    """For each generated token: integrated gradients of its log-probability at the
    prefix's embeddings, from the baseline tokens' embeddings, ``steps`` Gauss–Legendre
    nodes, ``batch`` rows per forward (``steps × T`` prefix forwards per sentence)."""
    wte = lm.transformer.wte
    count, length = target.shape[0], ids.shape[1]
    prompt = length - count
    alpha_np, weight_np = nodes_and_weights("gauss-legendre", steps)
    with torch.no_grad():
        emb, base = wte(ids), wte(baseline_ids).expand(ids.shape[0], -1, -1)
    alpha = torch.tensor(alpha_np, dtype=emb.dtype, device=emb.device).view(-1, 1, 1)
    weight = torch.tensor(weight_np, dtype=emb.dtype, device=emb.device).view(-1, 1, 1)
    rows = ids.shape[0] * steps
    out = []
    for t in range(count):
        n = prompt + t
        total = torch.zeros_like(emb)
        for start in range(0, rows, batch):
            r = torch.arange(start, min(start + batch, rows), device=emb.device)
            a, k = r // steps, r % steps
            z = torch.lerp(base[a, :n], emb[a, :n], alpha[k]).requires_grad_(True)
            q = torch.log_softmax(lm(inputs_embeds=z).logits[:, -1], -1)[:, target[t]]
            (grad,) = torch.autograd.grad(q.sum(), z)
            total[:, :n].index_add_(0, a, grad * weight[k])
        out.append(total * (emb - base))
    return out


# --- Captum ---------------------------------------------------------------------------------


def captum_matrix(lm: nn.Module, method: str, ids: Tensor, target: Tensor, steps: int, batch: int) -> Tensor:
    """Captum's ``LLMGradientAttribution``, one sentence at a time: ``(N, T, prompt)``."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    tokenizer = IdTokenizer()
    prompt = ids.shape[1] - target.shape[0]
    if method == "saliency":
        attr, kwargs = LLMGradientAttribution(LayerGradientXActivation(lm, lm.transformer.wte), tokenizer), {}
    else:
        attr = LLMGradientAttribution(LayerIntegratedGradients(lm, lm.transformer.wte), tokenizer)
        kwargs = {"n_steps": steps, "method": "gausslegendre", "internal_batch_size": batch}
    rows = []
    for sentence in ids[:, :prompt]:
        inp = TextTokenInput(tokenizer.decode(sentence), tokenizer, baselines=PAD)
        rows.append(attr.attribute(inp, target=target, **kwargs).token_attr)
    return torch.stack(rows)


def _matrix(results: list[Any], prompt: int | None = None) -> Tensor:
    """``(N, T, L)`` (or the first ``prompt`` columns): each token's attribution, summed
    over the embedding."""
    values = [r.values if hasattr(r, "values") and isinstance(r.values, Tensor) else r for r in results]
    matrix = torch.stack([v.detach().double().cpu().sum(-1) for v in values], 1)
    return matrix if prompt is None else matrix[:, :, :prompt]


def _relative(got: Tensor, reference: Tensor) -> float:
    return float((got - reference).abs().max() / reference.abs().max())


def sequence_table(device: torch.device, reps: int, setting: Setting, timed: Callable[[Callable[[], Any], torch.device], float],
                   disagreement: Callable[[Any, Any], float], with_captum: bool = True) -> None:
    """Time ours, the step-by-step loop and Captum (interleaved, in an order rotated
    from one repetition to the next, after a warm-up; medians) and print the table."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("\nSequence attribution: skipped (transformers is not installed).")
        return
    s = setting
    lm = tiny_gpt2(s).to(device)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, s.vocab, (s.sentences, s.prompt), generator=g)
    target = torch.randint(1, s.vocab, (s.generated,), generator=g)
    ids = torch.cat([prompts, target.expand(s.sentences, -1)], 1).to(device)
    length = ids.shape[1]
    pad_ids = torch.full((1, length), PAD, device=device)
    slc = Slice(lm, "transformer.wte")
    qois = ContinuationQoI(target).per_token()
    line = LineDoI(slc.baseline(pad_ids), steps=s.steps, space="slice")
    target = target.to(device)
    rows: dict[str, dict[str, Callable[[], Any]]] = {
        "saliency matrix (gradient × embedding)": {
            "ours": lambda: internal_influence(slc, qois, PointDoI(), ids, multiply_activation=True, batch_size=s.batch),
            "loop": lambda: loop_saliency(lm, ids, target, s.batch),
            "captum": lambda: captum_matrix(lm, "saliency", ids, target, s.steps, s.batch),
        },
        f"integrated gradients matrix ({s.steps} steps)": {
            "ours": lambda: internal_influence(slc, qois, line, ids, multiply_activation=True, batch_size=s.batch),
            "loop": lambda: loop_integrated_gradients(lm, ids, pad_ids, target, s.steps, s.batch),
            "captum": lambda: captum_matrix(lm, "ig", ids, target, s.steps, s.batch),
        },
    }
    # Captum's convention for the line: the earlier generated tokens stay at their own
    # embeddings (pad tokens on the prompt only)
    prompt_pads = torch.cat([torch.full((1, s.prompt), PAD, device=device), target.view(1, -1)], 1)
    captum_line = LineDoI(slc.baseline(prompt_pads), steps=s.steps, space="slice")
    ours_as_captum = {
        "saliency": None,
        "ig": lambda: internal_influence(slc, qois, captum_line, ids, multiply_activation=True, batch_size=s.batch),
    }
    print(f"\nSequence attribution: GPT-2 ({s.layers} layers, width {s.width}, vocabulary {s.vocab}, random weights, float32), "
          f"{s.sentences} sentences × (prompt {s.prompt} + T = {s.generated} generated tokens), batch {s.batch}; "
          f"ours: one query of T per-token QoIs, loop: T prefix forwards (inseq's step-by-step), "
          f"Captum: LLMGradientAttribution, one sentence at a time ({reps} interleaved repetitions, medians):")
    print("| matrix | T | ours ms | loop ms | loop/ours | Captum ms | Captum/ours | ours vs loop | ours vs Captum |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for (name, fns), kind in zip(rows.items(), ours_as_captum):
        if not with_captum:
            fns = {k: f for k, f in fns.items() if k != "captum"}
        outputs = {key: fn() for key, fn in fns.items()}  # warm-up
        agree = disagreement(outputs["ours"], outputs["loop"])
        vs_captum = None
        if "captum" in outputs:
            comparable = outputs["ours"] if ours_as_captum[kind] is None else ours_as_captum[kind]()
            vs_captum = _relative(_matrix(comparable, s.prompt), outputs["captum"].double().cpu())
        times: dict[str, list[float]] = {k: [] for k in fns}
        keys = list(fns)
        for rep in range(reps):  # interleaved, the order rotated
            for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
                times[key].append(timed(fns[key], device))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        captum = f"{med['captum']:.1f} | {med['captum'] / med['ours']:.2f}×" if "captum" in med else "– | –"
        print(f"| {name} | {s.generated} | {med['ours']:.1f} | {med['loop']:.1f} | {med['loop'] / med['ours']:.2f}× | {captum} | "
              f"{agree:.1e} | {f'{vs_captum:.1e}' if vs_captum is not None else '–'} |", flush=True)
