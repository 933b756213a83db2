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

from doi import DatasetDoI, LineDoI, NoiseDoI, PointDoI
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
