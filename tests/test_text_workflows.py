"""The workflows on text: top neurons of a transformer layer pooled over positions, the
spurious-token audit, and what a neuron responds to as token heatmaps.

A bag-of-embeddings classifier (any ``nn.Module`` taking ``input_ids`` and
``attention_mask``) is linear in its embeddings, so its integrated gradients are known on
paper; a tiny Hugging Face BERT (random weights, float64) checks the rankings against the
engine's pooled results and against per-point values summed by hand.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import Tensor, nn

from doi import LineDoI, PointDoI
from influence import explain_token_neurons, internal_influence, token_audit, top_neurons
from influence.text import baseline_ids
from qoi import ClassQoI, ComparativeQoI, NeuronQoI
from slices import Slice

VOCAB, LENGTH, CUE, PAD, CLS = 30, 7, 5, 0, 1
EMBEDDING = "bert.embeddings.word_embeddings"
LAYER = "bert.encoder.layer.1.intermediate"


class BagOfEmbeddings(nn.Module):
    """``f(t) = W · Σ_l m_l E[t_l]``: linear in the embeddings, masked by the attention mask."""

    def __init__(self, classes: int = 3, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Embedding(VOCAB, dim)
        self.head = nn.Linear(dim, classes, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head((self.embed(input_ids) * attention_mask[..., None]).sum(1))


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config).double().eval()


@pytest.fixture
def sentences() -> tuple[dict[str, Tensor], Tensor]:
    """Twelve padded sentences starting with [CLS], labels 0, 1, 2, ...; class 0 carries the cue token."""
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(CUE + 1, VOCAB, (12, LENGTH), generator=g)
    ids[:, 0] = CLS
    y = torch.arange(12) % 3
    ids[y == 0, 2] = CUE
    mask = torch.ones_like(ids)
    mask[::4, 5:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}, y


def test_a_hugging_face_output_gives_its_logits(sentences: tuple[dict[str, Tensor], Tensor]) -> None:
    """``ClassQoI(c)`` reads a ``ModelOutput``'s logits, as ``output="logits"`` does."""
    enc, _ = sentences
    slc = Slice(bert(), EMBEDDING)
    plain = internal_influence(slc, ClassQoI(1), PointDoI(), enc)
    chosen = internal_influence(slc, ClassQoI(1, output="logits"), PointDoI(), enc)
    assert torch.equal(plain.values, chosen.values) and float(plain.values.abs().max()) > 0


@pytest.mark.parametrize("ranking", ["influence", "gradient_x_activation", "contrast"])
def test_top_features_pool_units_over_positions(sentences: tuple[dict[str, Tensor], Tensor], ranking: str) -> None:
    """``by="feature"``: the pooled result is the engine's ``ClassDoI`` result; a feature's
    score and standard error are the mean and ``sd/√n`` of the members' values summed
    over positions, computed here from pointwise results; padded positions add 0."""
    enc, y = sentences
    slc = Slice(bert(), LAYER)
    features = top_neurons(slc, (enc, y), 0, 1, k=32, by="feature", ranking=ranking, absolute=True)
    units = top_neurons(slc, (enc, y), 0, 1, k=3, by="unit", ranking=ranking)
    torch.testing.assert_close(features.result.values, units.result.values, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(features.result.stderr, units.result.stderr, rtol=1e-8, atol=1e-14)
    members = {k: v[y == 0] for k, v in enc.items()}
    if ranking == "contrast":
        with torch.no_grad():
            mu = slc.h({k: v[y == 1] for k, v in enc.items()}).mean(0)
        each, multiply = LineDoI(mu, steps=16, space="slice"), True
    else:
        each, multiply = PointDoI(), ranking == "gradient_x_activation"
    per_point = internal_influence(slc, ComparativeQoI(0, 1), each, members, multiply_activation=multiply).values
    pad = members["attention_mask"] == 0
    assert bool(pad.any()) and bool((per_point[pad] == 0).all())
    summed = per_point.sum(1)  # (n, features)
    n = summed.shape[0]
    for entry in features.entries:
        v = summed[:, entry.index]
        assert entry.value == pytest.approx(float(v.mean()), rel=1e-9, abs=1e-15)
        assert entry.stderr == pytest.approx(float(v.std() / n**0.5), rel=1e-6, abs=1e-15)
    ranked = [abs(e.value) for e in features.entries]
    assert ranked == sorted(ranked, reverse=True) and features.by == "feature" and "feature" in features.to_table()


def test_token_audit_on_paper(sentences: tuple[dict[str, Tensor], Tensor]) -> None:
    """The bag of embeddings is linear, so token ``l`` gets exactly
    ``W_c · (E[t_l] − E[pad])`` (0 at padding and at the kept [CLS]); the shares, their
    standard errors, the token share of the cue and the flag follow by hand."""
    enc, y = sentences
    model = BagOfEmbeddings()
    with torch.no_grad():  # make the cue the strongest evidence for class 0
        model.embed.weight[CUE] = 4 * model.head.weight[0] / model.head.weight[0].norm()
    result = token_audit(model, (enc, y), CUE, embedding="embed", baseline=PAD, keep=[CLS], factor=2.0)
    ids, real = enc["input_ids"], enc["attention_mask"].bool()
    with torch.no_grad():
        change = model.embed.weight[ids] - model.embed.weight[PAD]  # (N, L, D)
        per_token = torch.einsum("nld,nd->nl", change, model.head.weight[y]).double()
    per_token = per_token * (real & (ids != CLS))
    torch.testing.assert_close(result.maps, per_token[result.index], rtol=1e-5, atol=1e-6)
    for row in result.rows:
        a = per_token[y == row.label]
        cue = (ids[y == row.label] == CUE) & real[y == row.label]
        shares = (a.clamp_min(0) * cue).sum(1) / a.clamp_min(0).sum(1)
        assert row.positive_share == pytest.approx(float(shares.mean()), rel=1e-5)
        assert row.positive_stderr == pytest.approx(float(shares.std() / shares.numel() ** 0.5), rel=1e-4, abs=1e-12)
        tokens = (cue.sum(1).double() / real[y == row.label].sum(1)).mean()
        assert row.area_share == pytest.approx(float(tokens), rel=1e-12)
    assert result.flagged == (0,) and result.area == "tokens" and "tokens share" in result.to_table()
    as_mask = token_audit(model, (enc, y), ids == CUE, embedding="embed", keep=[CLS], factor=2.0)
    as_callable = token_audit(model, (enc, y), lambda t: t == CUE, embedding="embed", keep=[CLS], factor=2.0)
    assert as_mask.rows == result.rows == as_callable.rows


def test_token_audit_of_a_bert_sums_to_each_sentences_change(sentences: tuple[dict[str, Tensor], Tensor]) -> None:
    """On a BERT the audit's token attributions of a sentence sum to ``f_c(t) − f_c(t⁰)``
    (completeness at the embeddings) and are zero at padding."""
    enc, y = sentences
    model = bert()
    result = token_audit(model, (enc, y), [CUE, 7], embedding=EMBEDDING, keep=[CLS], steps=24)
    base = baseline_ids(enc, PAD, keep=[CLS])
    with torch.no_grad():
        change = model(**enc).logits - model(**base).logits  # type: ignore[arg-type]
    want = change[result.index, result.labels]
    torch.testing.assert_close(result.maps.sum(1), want, rtol=1e-5, atol=1e-7)
    assert bool((result.maps[enc["attention_mask"][result.index] == 0] == 0).all())


def test_baseline_ids_keep_padding_and_special_tokens(sentences: tuple[dict[str, Tensor], Tensor]) -> None:
    enc, _ = sentences
    base = baseline_ids(enc, 3, keep=[CLS])
    assert isinstance(base, dict) and base["attention_mask"] is enc["attention_mask"]
    ids, new = enc["input_ids"], base["input_ids"]
    real = enc["attention_mask"].bool()
    assert bool((new[:, 0] == CLS).all()) and bool((new[~real] == PAD).all())
    assert bool((new[real & (ids != CLS)] == 3).all())
    assert torch.equal(baseline_ids(ids, 3), torch.full_like(ids, 3))


def test_what_a_neuron_responds_to(sentences: tuple[dict[str, Tensor], Tensor]) -> None:
    """Each view's examples are the (sentence, real position) pairs of largest activation
    of the feature, found here with a hook; each heatmap's values sum to the unit's
    change from the baseline ids (completeness) and padding is dropped."""
    enc, y = sentences
    model = bert()
    views = explain_token_neurons(model, LAYER, [4, (3, 9)], (enc, y), embedding=EMBEDDING, keep=[CLS], examples=3, steps=24, over=[0, 1])
    members = torch.nonzero((y == 0) | (y == 1)).flatten()
    with torch.no_grad():
        act = Slice(model, LAYER).h({k: v[members] for k, v in enc.items()})
    real = enc["attention_mask"][members].bool()
    feature = act[:, :, 4].masked_fill(~real, -torch.inf).flatten()
    top = feature.argsort(descending=True)[:3]
    view = views[0]
    assert view.examples.tolist() == members[top // LENGTH].tolist() and view.positions.tolist() == (top % LENGTH).tolist()
    torch.testing.assert_close(view.activations, feature[top])
    base = baseline_ids(enc, PAD, keep=[CLS])
    for i, (row, position) in enumerate(zip(view.examples.tolist(), view.positions.tolist())):
        with torch.no_grad():
            h = Slice(model, LAYER).h
            change = h({k: v[row : row + 1] for k, v in enc.items()})[0, position, 4] - h({k: v[row : row + 1] for k, v in base.items()})[0, position, 4]
        assert float(view.values[i].sum()) == pytest.approx(float(change), rel=1e-4, abs=1e-8)
    unit = views[1]
    assert unit.positions.tolist() == [3, 3, 3]
    words = [[f"w{t}" for t in row] for row in enc["input_ids"].tolist()]
    maps = view.heatmaps(words)
    assert [len(m.tokens) for m in maps] == [int(enc["attention_mask"][r].sum()) for r in view.examples.tolist()]
    # one unit's attributions equal a direct query of that unit
    row, position = int(unit.examples[0]), 3
    direct = internal_influence(
        Slice(model, EMBEDDING), NeuronQoI(LAYER, (position, 9)),
        LineDoI(Slice(model, EMBEDDING).baseline({k: v[row : row + 1] for k, v in base.items()}), steps=24, space="slice"),
        {k: v[row : row + 1] for k, v in enc.items()}, multiply_activation=True,
    )  # fmt: skip
    torch.testing.assert_close(unit.values[0], direct.token_attributions()[0], rtol=1e-10, atol=1e-14)


def test_text_workflows_refuse_what_cannot_work(sentences: tuple[dict[str, Tensor], Tensor]) -> None:
    enc, y = sentences
    model = bert()
    with pytest.raises(ValueError, match=r"token_audit: data's inputs must hold the token ids under 'input_ids'"):
        token_audit(model, ({"attention_mask": enc["attention_mask"]}, y), CUE, embedding=EMBEDDING)
    with pytest.raises(ValueError, match=r"token_audit: tokens as a mask must be bool of the ids' shape"):
        token_audit(model, (enc, y), torch.zeros(3, 3, dtype=torch.bool), embedding=EMBEDDING)
    with pytest.raises(TypeError, match=r"token_audit: embedding must be the name of the word-embedding layer"):
        token_audit(model, (enc, y), CUE, embedding=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"token_audit: labels must be integers of shape \(12,\)"):
        token_audit(model, (enc, y[:3]), CUE, embedding=EMBEDDING)
    with pytest.raises(ValueError, match=r"explain_token_neurons: layer 'bert.pooler' must give one vector per token"):
        explain_token_neurons(model, "bert.pooler", [0], (enc, y), embedding=EMBEDDING)
    with pytest.raises(ValueError, match=r"explain_token_neurons: unit 99 is out of range"):
        explain_token_neurons(model, LAYER, [99], (enc, y), embedding=EMBEDDING)
    with pytest.raises(ValueError, match=r"top_neurons: by must be one of"):
        top_neurons(Slice(model, LAYER), (enc, y), 0, 1, by="position")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ranking features needs units \(positions, features\)"):
        top_neurons(Slice(model, "bert.pooler"), (enc, y), 0, 1, by="feature")
