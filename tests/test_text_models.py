"""Text models end to end: token ids with attention masks (and token types) as a mapping.

Hugging Face BERT and GPT-2 from tiny configs (random weights, float64, no download).
Integrated gradients at the word embeddings against Captum's ``LayerIntegratedGradients``
(mask as an additional forward argument); language-model QoIs against Captum and by
hand; populations of sentences at an MLP layer of BERT against gradients taken by hand
with autograd; and every tensor of the mapping (ids, mask, token types, padded
differently per sentence) taken row by row with its sentence through batching,
chunking, the affine prefix, two ``torch.distributed`` processes and a checkpoint that
survives ``SIGKILL``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers
from torch import Tensor, nn

import influence.engine._chunk as chunks
import influence.engine._integrator as integrator
from doi import ClassDoI, DatasetDoI, LineDoI, PointDoI
from doi._points import count as points_count
from influence import internal_influence
from influence.engine._checkpoint import Checkpoint
from qoi import ClassQoI, ContinuationQoI, NextTokenQoI, QoIContext
from slices import Slice
from slices._affine import AffinePrefix

VOCAB, LENGTH, HIDDEN = 40, 7, 16
EMBEDDINGS = "bert.embeddings.word_embeddings"
MLP = "bert.encoder.layer.1.intermediate"  # GELU(dense(x)): (L, 32) units per sentence
EXACT = {"rtol": 1e-10, "atol": 1e-12}


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config).double().eval()


def encoding() -> dict[str, Tensor]:
    """Six sentences as a tokenizer pads them: lengths 7, 5, 3, 6, 4, 2 (pad id 0, mask
    0 after the end) and a second segment (token type 1) starting at a different place in
    each, token type 0 on padding."""
    ids = torch.randint(1, VOCAB, (6, LENGTH), generator=torch.Generator().manual_seed(11))
    position = torch.arange(LENGTH)
    mask = (position < torch.tensor([7, 5, 3, 6, 4, 2])[:, None]).long()
    types = (position >= torch.tensor([4, 2, 2, 3, 1, 1])[:, None]).long() * mask
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


LABELS = torch.tensor([1, 0, 1, 2, 1, 1])  # class 1: sentences 0, 2, 4, 5


def pad_ids(enc: dict[str, Tensor]) -> dict[str, Tensor]:
    """The pad token at every position, with each sentence's own mask and token types."""
    return {**enc, "input_ids": torch.zeros_like(enc["input_ids"])}


def rows(enc: dict[str, Tensor], index: Any) -> dict[str, Tensor]:
    return {k: v[index] for k, v in enc.items()}


class SentenceDataset(torch.utils.data.Dataset):
    """A map-style Dataset of ``(mapping, label)`` items."""

    def __init__(self, enc: dict[str, Tensor], labels: Tensor) -> None:
        self.enc, self.labels = enc, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return rows(self.enc, i), self.labels[i]


# --- 1. BERT: integrated gradients at the word embeddings of a padded mapping -------------


def test_two_classes_in_one_call_equal_captum_and_separate_calls() -> None:
    """``[ClassQoI(0), ClassQoI(2)]`` in one call over a padded mapping (one forward
    pass, two backward passes): each result equals Captum's LayerIntegratedGradients of
    its logit with the mask as an additional forward argument and the pad baseline
    (Gauss–Legendre, the same 16 steps), to 1e-5 relative to the largest value, and
    the same query with that QoI alone to 1e-10; padding positions get exactly zero."""
    from captum.attr import LayerIntegratedGradients  # not at the top: spawned processes import this module

    model = bert()
    enc = encoding()
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    slc = Slice(model, EMBEDDINGS)
    line = LineDoI(slc.baseline(pad_ids(inputs)), steps=16, space="slice")
    qois = [ClassQoI(0, output="logits"), ClassQoI(2, output="logits")]
    together = internal_influence(slc, qois, line, inputs, multiply_activation=True, batch_size=10)
    assert isinstance(together, list) and len(together) == 2
    pad = inputs["attention_mask"] == 0
    for c, result in zip((0, 2), together):
        alone = internal_influence(slc, ClassQoI(c, output="logits"), line, inputs, multiply_activation=True, batch_size=10)
        torch.testing.assert_close(result.values, alone.values, **EXACT)
        torch.testing.assert_close(result.stderr, alone.stderr, **EXACT)
        lig = LayerIntegratedGradients(lambda i, m, c=c: model(input_ids=i, attention_mask=m).logits[:, c], model.bert.embeddings.word_embeddings)
        theirs = lig.attribute(
            inputs["input_ids"], baselines=torch.zeros_like(inputs["input_ids"]), additional_forward_args=(inputs["attention_mask"],),
            n_steps=16, method="gausslegendre",
        )  # fmt: skip
        assert result.values.shape == (6, LENGTH, HIDDEN)
        torch.testing.assert_close(result.values, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
        assert bool(pad.any()) and bool((result.values[pad] == 0).all())
    assert float((together[0].values - together[1].values).abs().max()) > 1e-3  # two different questions


# --- 2. GPT-2: the next token's logit, a continuation's log-probability -------------------


@pytest.fixture(scope="module")
def lm() -> nn.Module:
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=HIDDEN, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).double().eval()


def test_next_token_logit_at_the_embedding_equals_captum(lm: nn.Module) -> None:
    """``NextTokenQoI(5)`` (the logit of token 5 after the last position) and its
    log-probability form, in one call, at ``transformer.wte`` from the embedding of token
    0: Captum's LayerIntegratedGradients of the same functions to 1e-5; each sentence's
    attributions sum to its change of the QoI (completeness)."""
    from captum.attr import LayerIntegratedGradients

    ids = torch.randint(1, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(3))
    slc = Slice(lm, "transformer.wte")
    pad = torch.zeros(1, LENGTH, dtype=torch.long)
    qois = [NextTokenQoI(5), NextTokenQoI(5, log_prob=True)]
    ours = internal_influence(slc, qois, LineDoI(slc.baseline(pad), steps=24, space="slice"), ids, multiply_activation=True)
    forwards = [lambda i: lm(i).logits[:, -1, 5], lambda i: torch.log_softmax(lm(i).logits[:, -1], -1)[:, 5]]
    for result, forward in zip(ours, forwards):
        theirs = LayerIntegratedGradients(forward, lm.transformer.wte).attribute(ids, baselines=pad.expand_as(ids), n_steps=24, method="gausslegendre")
        assert result.values.shape == (4, LENGTH, HIDDEN)
        torch.testing.assert_close(result.values, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
        with torch.no_grad():
            change = forward(ids) - forward(pad.expand_as(ids))
        torch.testing.assert_close(result.values.sum((1, 2)), change, rtol=1e-6, atol=1e-8)


def test_continuation_log_probability_by_hand(lm: nn.Module) -> None:
    """``ContinuationQoI([7, 3, 11])`` on prompts followed by that continuation (teacher
    forcing) is ``Σ_t log_softmax(logits[:, L − 4 + t])[y_t]``, summed by hand in a loop;
    and the gradient at the embedding that the engine takes (PointDoI) is autograd's
    gradient of that hand-made sum through the embedding."""
    prompts = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(4))
    target = [7, 3, 11]
    ids = torch.cat([prompts, torch.tensor([target]).expand(3, -1)], 1)
    length = ids.shape[1]
    qoi = ContinuationQoI(target)

    def by_hand(out: Any) -> Tensor:
        total = torch.zeros(ids.shape[0], dtype=torch.float64)
        for t, y in enumerate(target):
            row = out.logits[:, length - len(target) - 1 + t]  # position i predicts token i + 1
            total = total + torch.log_softmax(row, -1)[:, y]
        return total

    with torch.no_grad():
        out = lm(ids)
    torch.testing.assert_close(qoi(out, QoIContext()), by_hand(out), rtol=1e-13, atol=1e-13)
    ours = internal_influence(Slice(lm, "transformer.wte"), qoi, PointDoI(), ids)
    emb = lm.transformer.wte(ids).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(by_hand(lm(inputs_embeds=emb)).sum(), emb)
    torch.testing.assert_close(ours.values, grad, rtol=1e-10, atol=1e-13)


# --- 3. a class of sentences at an MLP layer, against autograd by hand --------------------


def _gradients_by_hand(model: nn.Module, layer: str, inputs: dict[str, Tensor], points: Tensor, c: int) -> Tensor:
    """``∂ logit_c / ∂z`` with the layer's output replaced by ``points`` (a leaf that
    requires grad), row by row of ``inputs``."""
    leaf = points.detach().clone().requires_grad_(True)
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, args, out: leaf)
    try:
        logit = model(**inputs).logits[:, c]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logit.sum(), leaf)
    return grad


@pytest.mark.parametrize("layer", [MLP, "bert.encoder.layer.0.intermediate"])
def test_a_class_of_sentences_at_an_mlp_layer_equals_autograd_by_hand(layer: str) -> None:
    """``ClassDoI`` of class 1 over ``(encoding, labels)`` and over a map-style Dataset of
    ``(mapping, label)``, at an intermediate (MLP) layer of BERT: with ``PointDoI`` each,
    the mean over the members of ``∂ logit_1/∂z`` at ``z = h(x)``; with a slice-space
    line from the pad sentence's activations, times ``z − b``, the mean of
    ``(z − b) · Σ_k w_k ∂ logit_1/∂z(b + α_k(z − b))`` (Gauss–Legendre nodes on [0, 1]
    from numpy). Gradients by hand: a forward hook puts a leaf in place of the layer's
    output, member by member (its own mask and token types). To 1e-8.

    At the last layer's MLP only the first ([CLS]) position reaches the classifier
    (the MLP works per position, the pooler reads position 0): every other position's
    gradient is exactly zero. At the first layer's MLP each member's gradient is zero
    exactly at its padding (masked out of every later attention) and not elsewhere."""
    model = bert()
    enc = encoding()
    slc = Slice(model, layer)
    members = torch.nonzero(LABELS == 1).flatten().tolist()
    assert members == [0, 2, 4, 5]
    with torch.no_grad():
        z = slc.h(enc)  # (6, L, 32), checked against the model's own layer
        captured: list[Tensor] = []
        handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, out: captured.append(out))
        model(**enc)
        handle.remove()
    assert z.shape == (6, LENGTH, 32) and torch.equal(z, captured[0])
    pad = rows(pad_ids(enc), [0])
    pad["attention_mask"] = torch.ones_like(pad["attention_mask"])
    baseline = slc.baseline(pad)  # (1, L, 32): one baseline for every member
    steps = 8
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float64)[:, None, None]
    ws = torch.tensor(weights / 2, dtype=torch.float64)[:, None, None]

    point_each = torch.stack([_gradients_by_hand(model, layer, rows(enc, [i]), z[i : i + 1], 1)[0] for i in members])
    line_each = []
    for i in members:
        grads = _gradients_by_hand(model, layer, rows(enc, [i] * steps), baseline + alphas * (z[i] - baseline), 1)
        line_each.append((z[i] - baseline[0]) * (ws * grads).sum(0))
    point_by_hand, line_by_hand = point_each.mean(0), torch.stack(line_each).mean(0)

    qoi = ClassQoI(1, output="logits")
    line = LineDoI(baseline, steps=steps, space="slice")
    for data in ((enc, LABELS), SentenceDataset(enc, LABELS)):
        point = internal_influence(slc, qoi, ClassDoI(data, 1, each=PointDoI()), batch_size=3)
        assert point.anchors == 4 and point.values.shape == (LENGTH, 32)
        torch.testing.assert_close(point.values, point_by_hand, rtol=1e-8, atol=1e-8 * float(point_by_hand.abs().max()))
        ig = internal_influence(slc, qoi, ClassDoI(data, 1, each=line), multiply_activation=True, batch_size=5)
        assert ig.anchors == 4
        torch.testing.assert_close(ig.values, line_by_hand, rtol=1e-8, atol=1e-8 * float(line_by_hand.abs().max()))

    reaches = point_each.abs().sum(-1) > 0  # (members, L): positions whose units reach the logit
    if layer == MLP:
        assert bool(reaches[:, 0].all()) and not bool(reaches[:, 1:].any())
    else:
        assert torch.equal(reaches, enc["attention_mask"][members].bool())


# --- 4. every tensor of the mapping travels with its sentence -----------------------------


def _ig(slc: Slice, enc: dict[str, Tensor], steps: int = 5) -> LineDoI:
    return LineDoI(slc.baseline(pad_ids(enc)), steps=steps, space="slice")


def test_each_sentence_alone_equals_any_batching() -> None:
    """Pointwise (integrated gradients at the word embeddings, ids + mask + token types)
    and pooled (class 1): batch sizes 1, 3 and 64 give the same results, and a
    sentence's pointwise result is the one it gets alone (a one-row mapping), to 1e-10.
    Without token types, or without the mask, the results change (both are used)."""
    model = bert()
    enc = encoding()
    slc = Slice(model, EMBEDDINGS)
    qoi = ClassQoI(1, output="logits")
    line = _ig(slc, enc)
    results = {b: internal_influence(slc, qoi, line, enc, multiply_activation=True, batch_size=b) for b in (1, 3, 64)}
    for b in (1, 3):
        torch.testing.assert_close(results[b].values, results[64].values, **EXACT)
        torch.testing.assert_close(results[b].completeness, results[64].completeness, rtol=1e-8, atol=1e-12)
    base = slc.baseline(pad_ids(enc))
    for i in range(6):
        alone = internal_influence(slc, qoi, LineDoI(base[i : i + 1], steps=5, space="slice"), rows(enc, [i]), multiply_activation=True)
        torch.testing.assert_close(alone.values[0], results[64].values[i], **EXACT)
    pooled = {b: internal_influence(slc, qoi, ClassDoI((enc, LABELS), 1, each=PointDoI()), batch_size=b) for b in (1, 3, 64)}
    for b in (1, 3):
        torch.testing.assert_close(pooled[b].values, pooled[64].values, **EXACT)
    members = rows(enc, LABELS == 1)
    pointwise = internal_influence(slc, qoi, PointDoI(), members, batch_size=64)
    torch.testing.assert_close(pooled[64].values, pointwise.values.mean(0), **EXACT)
    for drop in ("token_type_ids", "attention_mask"):
        fewer = {k: v for k, v in enc.items() if k != drop}
        other = internal_influence(slc, qoi, PointDoI(), fewer, batch_size=64)
        full = internal_influence(slc, qoi, PointDoI(), enc, batch_size=64)
        assert float((other.values - full.values).abs().max()) > 1e-6, drop


def test_chunks_of_a_population_of_sentences(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``_MAX_CHUNK`` lowered to 2 the six sentences (and the four of class 1) are
    integrated in chunks of two (seen by counting the chunks) and the pooled and
    pointwise results equal those of one chunk, to 1e-10."""
    model = bert()
    enc = encoding()
    slc = Slice(model, EMBEDDINGS)
    qoi = ClassQoI(2, output="logits")
    line = _ig(slc, enc, steps=4)
    shared = LineDoI(slc.baseline(rows(pad_ids(enc), [0])), steps=4, space="slice")
    queries = {
        "pointwise": lambda: internal_influence(slc, qoi, line, enc, multiply_activation=True, batch_size=4),
        "dataset": lambda: internal_influence(slc, qoi, DatasetDoI(enc, each=shared), multiply_activation=True, batch_size=4),
        "class": lambda: internal_influence(slc, qoi, ClassDoI(SentenceDataset(enc, LABELS), 1, each=shared), multiply_activation=True, batch_size=4),
    }
    sizes: list[int] = []
    original = integrator._Integrator._chunk

    def counting(self: Any, x: Any, *args: Any) -> Any:
        sizes.append(points_count(x))
        return original(self, x, *args)

    monkeypatch.setattr(integrator._Integrator, "_chunk", counting)
    whole = {name: run() for name, run in queries.items()}
    assert sizes == [6, 6, 4]
    monkeypatch.setattr(chunks, "_MAX_CHUNK", 2)
    sizes.clear()
    chunked = {name: run() for name, run in queries.items()}
    assert sizes == [2, 2, 2] * 2 + [2, 2]
    for name in queries:
        torch.testing.assert_close(chunked[name].values, whole[name].values, **EXACT)
        torch.testing.assert_close(chunked[name].stderr, whole[name].stderr, **EXACT)
        assert chunked[name].anchors == whole[name].anchors


class Head(nn.Module):
    """``g``: a Linear, a scaling and a shift (affine: the prefix), a tanh, the mean over
    positions and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(torch.tanh(0.5 * self.lin(z) - 0.1).mean(1))


class MaskedBag(nn.Module):
    """A tiny text classifier of ``input_ids, attention_mask``: word embeddings times the
    mask (``embed``), then ``head``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = Head()

    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.emb(input_ids) * attention_mask[..., None]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.embed(input_ids, attention_mask))


def test_the_affine_prefix_with_a_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The affine prefix applies to a slice whose ``g`` is a module of ``z`` alone: for a
    model of ``input_ids, attention_mask``, ``Slice.from_functions(h, g)`` with ``h`` the
    masked embedding of the mapping and ``g`` the head (a hook slice of the model runs
    ``g`` with the inputs and has no prefix). A slice-space line with
    ``affine_prefix=True`` takes its gradients at the prefix's frontier (the
    pull-back runs, counted) and equals ``affine_prefix=False`` to 1e-10, pointwise
    and pooled; and the hook slice of the whole model gives the same attributions."""
    model = MaskedBag().double().eval()
    enc = {k: v for k, v in encoding().items() if k != "token_type_ids"}
    slc = Slice.from_functions(lambda inputs: model.embed(**inputs), model.head, model=model)
    z = slc.h(enc)
    prefix = slc.g_affine_prefix(z)
    assert prefix is not None
    (u,) = prefix.frontier(z)
    with torch.no_grad():
        torch.testing.assert_close(u, 0.5 * model.head.lin(z) - 0.1, **EXACT)  # the frontier: just before the tanh
    assert "lin" not in prefix._rest.code and "tanh" in prefix._rest.code
    assert Slice(model, "emb").realisation == "hook" and Slice(model, "emb").g_affine_prefix(z) is None
    pulls: list[int] = []
    original = AffinePrefix.pull_back

    def counted(self: AffinePrefix, z: Tensor, cotangents: Any) -> Tensor:
        pulls.append(z.shape[0])
        return original(self, z, cotangents)

    monkeypatch.setattr(AffinePrefix, "pull_back", counted)
    line = LineDoI(slc.baseline(pad_ids(enc)), steps=6, space="slice")
    shared = LineDoI(torch.zeros(LENGTH, 8, dtype=torch.float64), steps=6, space="slice")
    queries = {
        "pointwise": lambda **o: internal_influence(slc, [0, 2], line, enc, multiply_activation=True, batch_size=5, **o),
        "class": lambda **o: internal_influence(slc, [0, 2], ClassDoI(SentenceDataset(enc, LABELS), 1, each=shared), multiply_activation=True, batch_size=5, **o),
    }
    for name, run in queries.items():
        pulls.clear()
        on = run(affine_prefix=True)
        assert sum(pulls) == 2 * (6 if name == "pointwise" else 4), name  # once per anchor and QoI
        pulls.clear()
        off = run(affine_prefix=False)
        assert pulls == []
        for a, b in zip(on, off):
            torch.testing.assert_close(a.values, b.values, **EXACT)
            torch.testing.assert_close(a.stderr, b.stderr, **EXACT)
    hooked = internal_influence(Slice(model, "emb"), [0, 2], line, enc, multiply_activation=True, batch_size=5)
    # the hook slice cuts before the mask: its attributions are at the embedding, the
    # function slice's at the embedding times the mask; they agree where the mask is 1 and
    # the hook slice's padding positions get zero (the mask kills their gradient)
    mask = enc["attention_mask"].bool()
    for a, b in zip(queries["pointwise"](), hooked):
        torch.testing.assert_close(a.values[mask], b.values[mask], **EXACT)
        assert bool((b.values[~mask] == 0).all())


# --- two processes ---------------------------------------------------------------------------

WORLD = 2


def _distributed_cases() -> dict[str, Any]:
    model = bert()
    enc = encoding()
    slc = Slice(model, EMBEDDINGS)
    mlp = Slice(model, MLP)
    line = _ig(slc, enc, steps=4)
    shared = LineDoI(slc.baseline(rows(pad_ids(enc), [0])), steps=4, space="slice")
    return {
        # pointwise: 6 sentences, 3 per process
        "pointwise-line": lambda **o: internal_influence(slc, [ClassQoI(0, output="logits"), ClassQoI(1, output="logits")], line, enc, multiply_activation=True, batch_size=5, **o),
        "pointwise-mlp": lambda **o: internal_influence(mlp, ClassQoI(2, output="logits"), PointDoI(), enc, batch_size=4, **o),
        # pooled: the class's sentences shared out in chunks
        "class-line": lambda **o: internal_influence(slc, ClassQoI(1, output="logits"), ClassDoI((enc, LABELS), 1, each=shared), multiply_activation=True, batch_size=4, **o),
        "dataset-mlp": lambda **o: internal_influence(mlp, ClassQoI(1, output="logits"), DatasetDoI(SentenceDataset(enc, LABELS), each=PointDoI()), batch_size=2, **o),
    }


def _pack(result: Any) -> list[dict[str, Any]]:
    return [
        {"values": r.values, "stderr": r.stderr, "completeness": r.completeness, "anchors": r.anchors, "samples": r.samples}
        for r in (result if isinstance(result, list) else [result])
    ]


def _distributed_worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        out = {name: _pack(run(distributed=True)) for name, run in _distributed_cases().items()}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("text-distributed")
    mp.spawn(_distributed_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_two_processes_equal_one(shards: list[dict[str, Any]]) -> None:
    """Two gloo processes (``distributed=True``, one ``mp.spawn``) over padded mappings:
    every rank returns the whole result, equal to one process's to 1e-10, pointwise
    (each rank explains three sentences, mask and token types with them) and pooled."""
    for name, run in _distributed_cases().items():
        want = run()
        want = want if isinstance(want, list) else [want]
        for out in shards:
            got = out[name]
            assert len(got) == len(want)
            for g, w in zip(got, want):
                torch.testing.assert_close(g["values"], w.values, **EXACT)
                torch.testing.assert_close(g["stderr"], w.stderr, **EXACT)
                if w.completeness is None:
                    assert g["completeness"] is None
                else:
                    torch.testing.assert_close(g["completeness"], w.completeness, rtol=1e-8, atol=1e-12)
                assert (g["anchors"], g["samples"]) == (w.anchors, w.samples), name


# --- a checkpointed population of sentences, killed and resumed -----------------------------

BUILD = """
import torch, transformers

def build(n):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config).double().eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 40, (n, 7), generator=g)
    lengths = torch.randint(2, 8, (n, 1), generator=g)
    splits = torch.randint(1, 5, (n, 1), generator=g)
    position = torch.arange(7)
    mask = (position < lengths).long()
    encoding = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": (position >= splits).long() * mask}
    return model, encoding
"""

QUERY = """
import time
import influence.engine._chunk as chunks
from doi import DatasetDoI, LineDoI
from influence import internal_influence
from qoi import FunctionQoI
from slices import Slice

ROWS = [0]

def slow_logit_1(output, pause=0.0):
    ROWS[0] += output.logits.shape[0]
    time.sleep(pause)
    return output.logits[:, 1]

def query(n, pause, **options):
    model, encoding = build(n)
    slc = Slice(model, "bert.embeddings.word_embeddings")
    line = LineDoI(slc.baseline(torch.zeros(1, 7, dtype=torch.long)), steps=4, space="slice")
    qoi = lambda out: slow_logit_1(out, pause)
    qoi.__name__ = "slow_logit_1"
    return internal_influence(slc, FunctionQoI(qoi), DatasetDoI(encoding, each=line), batch_size=8, **options)
"""

CHILD = BUILD + QUERY + """
import sys
torch.set_num_threads(1)
chunks._MAX_CHUNK = 2
query(int(sys.argv[2]), float(sys.argv[3]), checkpoint=sys.argv[1], checkpoint_every=0)
"""


def test_a_killed_population_of_sentences_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled query over 24 padded sentences (ids, mask, token types; chunks of two,
    a checkpoint after each) runs in a subprocess and is killed with SIGKILL once a
    checkpoint exists; the same query resumed here evaluates only the remaining
    ``(N − P)·S`` rows and gives the uninterrupted result bit for bit."""
    n, steps = 24, 4
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt = tmp_path / "query.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(n), "0.15"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)
            assert proc.poll() is None, "the query ended before it could be killed: " + log.read_text()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    position = Checkpoint(ckpt, 0).load()["position"]  # type: ignore[index]
    assert 0 < position < n and position % 2 == 0

    space: dict[str, Any] = {}
    exec(BUILD + QUERY, space)
    monkeypatch.setattr(chunks, "_MAX_CHUNK", 2)
    resumed = space["query"](n, 0.0, checkpoint=ckpt)
    assert space["ROWS"][0] == (n - position) * steps  # the first P sentences were not recomputed
    space["ROWS"][0] = 0
    want = space["query"](n, 0.0)
    assert space["ROWS"][0] == n * steps
    assert torch.equal(resumed.values, want.values) and torch.equal(resumed.stderr, want.stderr)
    assert resumed.anchors == n and resumed.samples == steps * n
    # the checkpoint held the same query: another QoI is refused
    with pytest.raises(ValueError, match="checkpoint"):
        model, enc = space["build"](n)
        slc = Slice(model, EMBEDDINGS)
        line = LineDoI(slc.baseline(torch.zeros(1, LENGTH, dtype=torch.long)), steps=steps, space="slice")
        internal_influence(slc, ClassQoI(1, output="logits"), DatasetDoI(enc, each=line), batch_size=8, checkpoint=ckpt)


# --- 6. a mapping that cannot work ----------------------------------------------------------


def test_a_mapping_without_input_ids_names_inputs() -> None:
    """A mapping with an attention mask and no ``input_ids`` given to BERT: a ValueError
    or TypeError whose message names ``inputs`` (pointwise), or the DoI's data (a
    population)."""
    model = bert()
    slc = Slice(model, EMBEDDINGS)
    only_mask = {"attention_mask": encoding()["attention_mask"]}
    with pytest.raises(ValueError, match=r"^inputs: the model fails on points of shape \{attention_mask: \(\d+,\)\} \(ValueError: You must"):
        internal_influence(slc, ClassQoI(1, output="logits"), PointDoI(), only_mask)
    with pytest.raises(ValueError, match=r"^doi: the data of DatasetDoI.*the keys, shapes and dtypes the model takes"):
        internal_influence(slc, ClassQoI(1, output="logits"), DatasetDoI(only_mask))
    with pytest.raises(ValueError, match=r"Slice.baseline: the model fails on these inputs \(ValueError: You must specify"):
        slc.baseline(only_mask)
    # an error of a QoI is not the data's fault: it stays as it is
    with pytest.raises(ValueError, match=r"^ClassQoI\(7\): class 7 is out of range"):
        internal_influence(slc, ClassQoI(7), PointDoI(), encoding())
