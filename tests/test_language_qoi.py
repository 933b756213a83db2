"""QoIs of a causal language model (a tiny Hugging Face GPT-2, random weights, float64):
the next token's logit or log-probability, a continuation's log-probability under teacher
forcing, and one QoI per generated token sharing one forward pass. Values are checked by
hand from the logits, attributions against Captum's LayerIntegratedGradients on the same
embedding layer, and the per-token QoIs by linearity."""

from __future__ import annotations

import pytest
import torch
import transformers
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn

from doi import LineDoI, PointDoI
from influence import internal_influence
from qoi import ContinuationQoI, NextTokenQoI, QoIContext
from slices import Slice

VOCAB = 30


@pytest.fixture(scope="module")
def lm() -> nn.Module:
    torch.manual_seed(5)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).double().eval()


@pytest.fixture
def ids() -> Tensor:
    """Three prompts of 5 tokens, each followed by the same continuation [7, 3, 11]."""
    prompts = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(1))
    return torch.cat([prompts, torch.tensor([[7, 3, 11]]).expand(3, -1)], 1)


def test_values_by_hand(lm: nn.Module, ids: Tensor) -> None:
    """The QoIs evaluate to what the logits say."""
    with torch.no_grad():
        out = lm(ids)
    logits, context = out.logits, QoIContext()
    torch.testing.assert_close(NextTokenQoI(4)(out, context), logits[:, -1, 4])
    torch.testing.assert_close(NextTokenQoI(4, position=2, log_prob=True)(out, context), torch.log_softmax(logits[:, 2], -1)[:, 4])
    log_probs = torch.log_softmax(logits, -1)
    by_hand = log_probs[:, 4, 7] + log_probs[:, 5, 3] + log_probs[:, 6, 11]  # position i predicts token i + 1
    torch.testing.assert_close(ContinuationQoI([7, 3, 11])(out, context), by_hand)
    per_token = ContinuationQoI(torch.tensor([7, 3, 11])).per_token()
    assert len(per_token) == 3
    torch.testing.assert_close(sum(q(out, context) for q in per_token), by_hand)
    torch.testing.assert_close(per_token[1](out, context), log_probs[:, 5, 3])
    torch.testing.assert_close(ContinuationQoI([7, 3, 11], output="logits")(out, context), by_hand)


def test_continuation_attributions_equal_captum(lm: nn.Module, ids: Tensor) -> None:
    """Integrated gradients of log p(continuation) at the token embeddings, from the
    embedding of token 0: Captum's LayerIntegratedGradients of the same function; each
    sequence's attributions sum to its Δ log p (completeness)."""
    slc = Slice(lm, "transformer.wte")
    baseline_ids = torch.zeros(1, ids.shape[1], dtype=torch.long)
    qoi = ContinuationQoI([7, 3, 11])
    ours = internal_influence(slc, qoi, LineDoI(slc.baseline(baseline_ids), steps=24, space="slice"), ids, multiply_activation=True)

    def log_p(i: Tensor) -> Tensor:
        return qoi(lm(i), QoIContext())

    theirs = LayerIntegratedGradients(log_p, lm.transformer.wte).attribute(ids, baselines=baseline_ids.expand_as(ids), n_steps=24, method="gausslegendre")
    torch.testing.assert_close(ours.values, theirs, rtol=1e-7, atol=1e-9 * float(theirs.abs().max()))
    assert float(ours.completeness.max()) < 1e-6


def test_per_token_qois_share_the_forward_pass(lm: nn.Module, ids: Tensor) -> None:
    """One query of the T per-token QoIs: T results, each equal to its own query, and
    summing (by linearity) to the continuation's attribution: the matrix of source and
    earlier target tokens × generated tokens. A generated token's attribution to the
    tokens after it is exactly zero (the model is causal)."""
    slc = Slice(lm, "transformer.wte")
    qoi = ContinuationQoI([7, 3, 11])
    together = internal_influence(slc, qoi.per_token(), PointDoI(), ids, multiply_activation=True)
    assert len(together) == 3
    for t, result in enumerate(together):
        alone = internal_influence(slc, qoi.per_token()[t], PointDoI(), ids, multiply_activation=True)
        torch.testing.assert_close(result.values, alone.values, rtol=1e-12, atol=1e-15)
        future = result.values[:, 5 + t :]  # token 5 + t is the one predicted; it and later ones come after
        assert bool((future == 0).all())
    whole = internal_influence(slc, qoi, PointDoI(), ids, multiply_activation=True)
    torch.testing.assert_close(sum(r.values for r in together), whole.values, rtol=1e-10, atol=1e-14)
    matrix = torch.stack([r.values.sum(-1) for r in together], 1)  # (N, T generated, L tokens)
    assert matrix.shape == (3, 3, 8)


@pytest.mark.parametrize(
    "make, kind, message",
    [
        (lambda: NextTokenQoI(-1), TypeError, "token must be a token id"),
        (lambda: NextTokenQoI(1, position=1.5), TypeError, "position must be an int"),
        (lambda: ContinuationQoI([]), TypeError, "non-empty 1-D sequence"),
        (lambda: ContinuationQoI([1.5]), TypeError, "non-empty 1-D sequence"),
        (lambda: ContinuationQoI([1, 2], steps=[2]), ValueError, "steps must be positions 0..1"),
    ],
)
def test_bad_arguments(make, kind, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(kind, match=message):
        make()


def test_outputs_that_do_not_fit(lm: nn.Module, ids: Tensor) -> None:
    with torch.no_grad():
        out = lm(ids)
    with pytest.raises(ValueError, match="token 99 is outside a vocabulary of 30"):
        NextTokenQoI(99)(out, QoIContext())
    with pytest.raises(ValueError, match="position 8 is outside a sequence of 8 tokens"):
        NextTokenQoI(1, position=8)(out, QoIContext())
    with pytest.raises(ValueError, match="needs a longer input"):
        ContinuationQoI(list(range(8)))(out, QoIContext())
    with pytest.raises(ValueError, match=r"logits of shape \(batch, length, vocabulary\)"):
        NextTokenQoI(1)(out.logits[:, -1], QoIContext())
