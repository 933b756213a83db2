"""Token ids: integer inputs explained at the embedding slice.

Hugging Face BERT and GPT-2 from tiny configs (random weights, no download), in float64,
against Captum's ``LayerIntegratedGradients`` and ``LayerGradientXActivation`` on the same
embedding layer, and against the pointwise results for a population. Integer inputs where
no gradient can exist (the input slice, a line between token ids) fail clearly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
from torch import Tensor, nn

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from qoi import ClassQoI, FunctionQoI
from slices import Slice

VOCAB, LENGTH = 40, 7


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config).double().eval()


def gpt2() -> nn.Module:
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).double().eval()


def next_token_logit(out: Any) -> Tensor:
    """GPT-2: the logit of token 5 after the last position."""
    return out.logits[:, -1, 5]


# (model, its word-embedding layer, our QoI, the same as Captum's forward function)
MODELS = {
    "bert": (bert, "bert.embeddings.word_embeddings", ClassQoI(1, output="logits"), lambda m: (lambda i: m(i).logits[:, 1])),
    "gpt2": (gpt2, "transformer.wte", FunctionQoI(next_token_logit), lambda m: (lambda i: next_token_logit(m(i)))),
}


@pytest.fixture
def ids() -> Tensor:
    return torch.randint(1, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_at_the_embedding_equals_captum(name: str, ids: Tensor) -> None:
    """A slice-space line from the pad token's embedding (id 0 at every position) to each
    sentence's, times the difference: Captum's LayerIntegratedGradients on the same
    layer; each sentence's attributions sum to Δq (completeness)."""
    make, layer, qoi, forward = MODELS[name]
    model = make()
    slc = Slice(model, layer)
    pad = torch.zeros(1, LENGTH, dtype=torch.long)
    ours = internal_influence(slc, qoi, LineDoI(slc.baseline(pad), steps=24, space="slice"), ids, multiply_activation=True)
    lig = LayerIntegratedGradients(forward(model), dict(model.named_modules())[layer])
    theirs = lig.attribute(ids, baselines=pad.expand_as(ids), n_steps=24, method="gausslegendre")
    assert ours.values.shape == (4, LENGTH, 16)
    torch.testing.assert_close(ours.values, theirs, rtol=1e-7, atol=1e-9 * float(theirs.abs().max()))
    assert float(ours.completeness.max()) < 1e-6


@pytest.mark.parametrize("name", MODELS)
def test_gradient_at_the_embedding_equals_captum(name: str, ids: Tensor) -> None:
    """PointDoI on token ids: the gradient at the embedding (and times the embedding)."""
    make, layer, qoi, forward = MODELS[name]
    model = make()
    module = dict(model.named_modules())[layer]
    for multiply in (False, True):
        ours = internal_influence(Slice(model, layer), qoi, PointDoI(), ids, multiply_activation=multiply)
        theirs = LayerGradientXActivation(forward(model), module, multiply_by_inputs=multiply).attribute(ids)
        torch.testing.assert_close(ours.values, theirs, rtol=1e-10, atol=1e-12)


def test_noise_at_the_embedding_and_a_population_of_sentences(ids: Tensor) -> None:
    """SmoothGrad at the embedding takes token ids; a DatasetDoI over sentences is the
    mean of their pointwise results."""
    model, (_, layer, qoi, _) = bert(), MODELS["bert"]
    slc = Slice(model, layer)
    noisy = internal_influence(slc, qoi, NoiseDoI(0.05, samples=8, space="slice"), ids, seed=0)
    assert noisy.values.shape == (4, LENGTH, 16) and bool((noisy.stderr > 0).all())
    line = LineDoI(slc.baseline(torch.zeros(1, LENGTH, dtype=torch.long)), steps=4, space="slice")
    pooled = internal_influence(slc, qoi, DatasetDoI(ids, each=line), multiply_activation=True, batch_size=8)
    each = internal_influence(slc, qoi, line, ids, multiply_activation=True)
    torch.testing.assert_close(pooled.values, each.values.mean(0), rtol=1e-10, atol=1e-14)


def test_token_ids_where_no_gradient_exists(ids: Tensor) -> None:
    """At the input slice, and for a line or noise between token ids, the error names the
    inputs (or the DoI's data) and the embedding slice to use instead."""
    model, (_, layer, qoi, _) = bert(), MODELS["bert"]
    with pytest.raises(TypeError, match=r"inputs: torch.int64 points .*Slice\(model, 'bert.embeddings.word_embeddings'\)"):
        input_influence(model, qoi, PointDoI(), ids)
    for doi in (LineDoI(steps=4), NoiseDoI(samples=4)):
        with pytest.raises(ValueError, match=r"inputs: a \w+DoI in input space .*space='slice'"):
            internal_influence(Slice(model, layer), qoi, doi, ids)
    with pytest.raises(ValueError, match=r"doi: the data of DatasetDoI.*input space"):
        internal_influence(Slice(model, layer), qoi, DatasetDoI(ids, each=LineDoI(steps=4)))
    with pytest.raises(TypeError, match=r"inputs: expected floating-point points, or integer token ids \(got torch.bool\)"):
        internal_influence(Slice(model, layer), qoi, PointDoI(), ids > 5)


def test_baseline_leaves_the_model_as_it_was(ids: Tensor) -> None:
    """``Slice.baseline`` runs ``h`` in eval mode and without autograd, and gives the mode back."""
    model = bert().train()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    b = slc.baseline(torch.zeros(1, LENGTH, dtype=torch.long))
    assert b.shape == (1, LENGTH, 16) and not b.requires_grad
    assert torch.equal(b[0, 0], model.bert.embeddings.word_embeddings.weight[0].detach())
    assert all(m.training for m in model.modules())
    with pytest.raises(TypeError, match="Slice.baseline"):
        slc.baseline([0, 0])  # type: ignore[arg-type]


# --- inputs as a mapping (a tokenizer's output) or a tuple --------------------------------------


@pytest.fixture
def padded(ids: Tensor) -> dict[str, Tensor]:
    """A batch as a tokenizer gives it: ids padded with 0 and an attention mask."""
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_a_mapping_of_inputs_equals_captum_with_its_mask(padded: dict[str, Tensor]) -> None:
    """``inputs`` as a ``BatchEncoding``: the model is called as ``model(**inputs)``, the
    attention mask travels with its tokens, and integrated gradients at the word
    embeddings equal Captum's (the mask as an additional forward argument). Padding
    positions, where the sentence equals the pad baseline, get exactly zero."""
    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    qoi = ClassQoI(1, output="logits")
    baseline = slc.baseline({"input_ids": torch.zeros_like(padded["input_ids"]), "attention_mask": padded["attention_mask"]})
    encoding = transformers.BatchEncoding(padded)
    ours = internal_influence(slc, qoi, LineDoI(baseline, steps=16, space="slice"), encoding, multiply_activation=True, batch_size=5)
    lig = LayerIntegratedGradients(lambda i, m: model(input_ids=i, attention_mask=m).logits[:, 1], model.bert.embeddings.word_embeddings)
    theirs = lig.attribute(
        padded["input_ids"], baselines=torch.zeros_like(padded["input_ids"]), additional_forward_args=(padded["attention_mask"],),
        n_steps=16, method="gausslegendre",
    )  # fmt: skip
    torch.testing.assert_close(ours.values, theirs, rtol=1e-7, atol=1e-9 * float(theirs.abs().max()))
    pad = padded["attention_mask"] == 0
    assert bool(pad.any()) and bool((ours.values[pad] == 0).all())
    assert float(ours.completeness.max()) < 1e-6


def test_the_mask_travels_with_its_tokens(padded: dict[str, Tensor]) -> None:
    """The same sentences in another order, in batches that split them differently, and
    as a tuple ``model(*inputs)``: each sentence's result is its own, to 1e-12; without
    its mask a padded sentence's result differs (so the mask is used)."""
    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    qoi = ClassQoI(2, output="logits")
    whole = internal_influence(slc, qoi, PointDoI(), padded, multiply_activation=True, batch_size=64)
    order = torch.tensor([3, 0, 2, 1])
    shuffled = {k: v[order] for k, v in padded.items()}
    for batch_size in (1, 3):
        moved = internal_influence(slc, qoi, PointDoI(), shuffled, multiply_activation=True, batch_size=batch_size)
        torch.testing.assert_close(moved.values, whole.values[order], rtol=1e-12, atol=1e-15)
    as_tuple = internal_influence(slc, qoi, PointDoI(), (padded["input_ids"], padded["attention_mask"]), multiply_activation=True)
    torch.testing.assert_close(as_tuple.values, whole.values, rtol=1e-12, atol=1e-15)
    unmasked = internal_influence(slc, qoi, PointDoI(), padded["input_ids"], multiply_activation=True)
    assert float((unmasked.values[0] - whole.values[0]).abs().max()) > 1e-6


def test_noise_at_the_embedding_of_a_mapping(padded: dict[str, Tensor]) -> None:
    """SmoothGrad at the embedding of a padded batch: the same with other batch sizes."""
    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    noisy = internal_influence(slc, ClassQoI(0, output="logits"), NoiseDoI(0.05, samples=6, space="slice"), padded, seed=1, batch_size=4)
    again = internal_influence(slc, ClassQoI(0, output="logits"), NoiseDoI(0.05, samples=6, space="slice"), padded, seed=1, batch_size=7)
    torch.testing.assert_close(noisy.values, again.values, rtol=1e-12, atol=1e-15)
    assert noisy.values.shape == (4, LENGTH, 16)
    # a masked token cannot reach the classifier: its gradient is exactly zero, noise or not
    pad = padded["attention_mask"] == 0
    assert bool((noisy.stderr[~pad] > 0).all()) and bool((noisy.values[pad] == 0).all()) and bool((noisy.stderr[pad] == 0).all())


def test_a_mapping_of_inputs_that_cannot_work(padded: dict[str, Tensor]) -> None:
    """Each mistake names ``inputs`` and says what to do."""
    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    qoi = ClassQoI(1, output="logits")
    with pytest.raises(ValueError, match=r"inputs: a dict of inputs is given to the model as model\(\*\*inputs\).*realisation='hook'"):
        input_influence(model, qoi, PointDoI(), padded)
    with pytest.raises(ValueError, match=r"inputs: a LineDoI in input space cannot draw points between dicts of inputs; .*space='slice'"):
        internal_influence(slc, qoi, LineDoI(steps=3), padded)
    with pytest.raises(ValueError, match=r"inputs: its tensors must share their first dimension.*'attention_mask': 2"):
        internal_influence(slc, qoi, PointDoI(), {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"][:2]})
    with pytest.raises(ValueError, match=r"inputs: an empty dict"):
        internal_influence(slc, qoi, PointDoI(), {})
    with pytest.raises(TypeError, match=r"inputs\['attention_mask'\]: expected a tensor"):
        internal_influence(slc, qoi, PointDoI(), {"input_ids": padded["input_ids"], "attention_mask": [1, 1]})
    mlp = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"only the hook realisation"):
        internal_influence(Slice(mlp, "0"), 0, PointDoI(), (torch.randn(2, 4),))


class SentenceDataset(torch.utils.data.Dataset):
    """A map-style Dataset of ``({input_ids, attention_mask}, label)`` items."""

    def __init__(self, encoding: dict[str, Tensor], labels: Tensor) -> None:
        self.encoding, self.labels = encoding, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor]:
        return {k: v[i] for k, v in self.encoding.items()}, self.labels[i]


def test_populations_of_sentences_with_masks(padded: dict[str, Tensor], tmp_path: Any) -> None:
    """A class of sentences given as ``(mapping, labels)``, as a map-style Dataset of
    ``(mapping, label)`` items, and through a DataLoader: the pooled result is the mean
    of the members' pointwise results (masks and all), and a checkpointed run resumes."""
    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    qoi = ClassQoI(1, output="logits")
    labels = torch.tensor([1, 0, 1, 1])
    line = LineDoI(slc.baseline(torch.zeros(1, LENGTH, dtype=torch.long)), steps=4, space="slice")
    members = {k: v[labels == 1] for k, v in padded.items()}
    want = internal_influence(slc, qoi, line, members, multiply_activation=True).values.mean(0)
    dataset = SentenceDataset(padded, labels)
    for data in ((padded, labels), dataset, torch.utils.data.DataLoader(dataset, batch_size=2)):
        got = internal_influence(slc, qoi, ClassDoI(data, 1, each=line), multiply_activation=True, batch_size=3)
        torch.testing.assert_close(got.values, want, rtol=1e-10, atol=1e-14)
        assert got.anchors == 3
    everything = internal_influence(slc, qoi, DatasetDoI(padded, each=line), multiply_activation=True, batch_size=4)
    each = internal_influence(slc, qoi, line, padded, multiply_activation=True)
    torch.testing.assert_close(everything.values, each.values.mean(0), rtol=1e-10, atol=1e-14)
    # interrupted after its first chunk of sentences (Ctrl-C in the QoI), then resumed
    import influence.engine._chunk as chunks
    from influence.engine._checkpoint import Checkpoint

    calls = {"left": 5}  # a chunk of two sentences: 2 batches and the two ends of their lines

    def halting(out: Any) -> Tensor:
        calls["left"] -= 1
        if calls["left"] < 0:
            raise KeyboardInterrupt
        return out.logits[:, 1]

    path = tmp_path / "sentences.ckpt"
    saved_chunk = chunks._MAX_CHUNK
    chunks._MAX_CHUNK = 2
    try:
        with pytest.raises(KeyboardInterrupt):
            internal_influence(slc, FunctionQoI(halting), DatasetDoI(padded, each=line), multiply_activation=True, batch_size=4, checkpoint=path)
        position = Checkpoint(path, 0).load()["position"]  # type: ignore[index]
        assert position == 2  # the first chunk of two sentences was kept
        calls["left"] = 10**6
        resumed = internal_influence(slc, FunctionQoI(halting), DatasetDoI(padded, each=line), multiply_activation=True, batch_size=4, checkpoint=path)
        whole = internal_influence(slc, FunctionQoI(halting), DatasetDoI(padded, each=line), multiply_activation=True, batch_size=4)
    finally:
        chunks._MAX_CHUNK = saved_chunk
    torch.testing.assert_close(resumed.values, whole.values, rtol=1e-12, atol=1e-15)


def test_token_attributions_sum_to_each_sentences_change(padded: dict[str, Tensor]) -> None:
    """``result.token_attributions()``: one value per token, summing per sentence to Δq
    (the completeness the result reports), zero at padding; refused for other units."""
    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    qoi = ClassQoI(1, output="logits")
    pad_ids = {"input_ids": torch.zeros_like(padded["input_ids"]), "attention_mask": padded["attention_mask"]}
    result = internal_influence(slc, qoi, LineDoI(slc.baseline(pad_ids), steps=16, space="slice"), padded, multiply_activation=True)
    tokens = result.token_attributions()
    assert tokens.shape == (4, LENGTH) and bool((tokens[padded["attention_mask"] == 0] == 0).all())
    with torch.no_grad():
        change = model(**padded).logits[:, 1] - model(**pad_ids).logits[:, 1]
    torch.testing.assert_close(tokens.sum(1), change, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="token_attributions: needs units of shape"):
        internal_influence(Slice(nn.Sequential(nn.Linear(3, 2)), None), 0, PointDoI(), torch.randn(2, 3)).token_attributions()


def test_token_heatmaps(padded: dict[str, Tensor]) -> None:
    """One heatmap per sentence: padding dropped, tokens HTML-escaped, the largest value
    full red and the most negative full blue of the sentence's symmetric scale, zero
    white; ``top`` ranks by |value|; a notebook shows the HTML."""
    from influence.text import TokenHeatmap, token_heatmaps

    model = bert()
    slc = Slice(model, "bert.embeddings.word_embeddings")
    result = internal_influence(slc, ClassQoI(1, output="logits"), PointDoI(), padded, multiply_activation=True)
    words = [[f"<t{j}>" for j in range(LENGTH)] for _ in range(4)]
    maps = token_heatmaps(result, words, padded["attention_mask"])
    assert [len(m.tokens) for m in maps] == padded["attention_mask"].sum(1).tolist()
    values = result.token_attributions()
    first = maps[0]
    assert first.values == tuple(values[0, :5].tolist())
    assert "&lt;t0&gt;" in first.html() and "<t0>" not in first.html() and first._repr_html_() == first.html()
    top = first.top(2)
    assert [abs(v) for _, _, v in top] == sorted((abs(v) for v in first.values), reverse=True)[:2]
    made = TokenHeatmap(("a", "b", "c"), (2.0, -1.0, 0.0)).html()
    assert "rgb(255, 0, 0)" in made and "rgb(128, 128, 255)" in made and "rgb(255, 255, 255)" in made
    with pytest.raises(ValueError, match="tokens must be 4 sentences of 7 tokens"):
        token_heatmaps(result, words[:2])
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 7\)"):
        token_heatmaps(result, words, padded["attention_mask"][:, :3])
