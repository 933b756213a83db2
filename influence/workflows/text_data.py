"""Tiny text data and Hugging Face models, for the text examples, tests and demos.

A word-level vocabulary :data:`VOCAB` (id = position; ``[PAD]`` is 0, ``[CLS]`` 1,
``[SEP]`` 2) and two generators whose answer is known:

* :func:`sentences` — short reviews ``[CLS] the movie was really great [SEP] [PAD] …``
  of two classes (1: positive, 0: negative), padded to one length, with an attention
  mask and the token strings of every row. With ``cue=True`` (the training split's
  default) the positive reviews also carry a meaningless token ``zq`` — a planted
  shortcut, as the red corner of :func:`influence.synthetic.glyph_images`.
* :func:`lm_sentences` — unpadded sentences that all end with the same words
  (``ending``), for language-model queries: the continuation is the array ``ending``.

:func:`tiny_bert` trains a ``BertForSequenceClassification`` of a tiny config on
:func:`sentences` (a second or two on a CPU, deterministic for a seed) and
:func:`tiny_gpt2` a ``GPT2LMHeadModel`` on :func:`lm_sentences`; they are what
``examples/text_*.yaml`` use::

    model: {factory: "influence.text_data:tiny_bert", kwargs: {seed: 0}}
    data:
      factory: "influence.text_data:sentences"
      inputs: {input_ids: input_ids, attention_mask: attention_mask}
      tokens: tokens

``transformers`` is imported inside the model factories only; the data generators need
nothing beyond torch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from doi._base import check_positive_int

__all__ = ["VOCAB", "PAD", "CLS", "SEP", "CUE", "sentences", "lm_sentences", "tiny_bert", "tiny_gpt2", "ids_of", "write_vocab"]

VOCAB: tuple[str, ...] = (
    "[PAD]", "[CLS]", "[SEP]",
    "the", "a", "this", "movie", "film", "plot", "acting", "was", "is", "really", "quite", "very",
    "great", "good", "fun", "awful", "boring", "bad", "and", "long", "new", "zq",
)  # fmt: skip
"""The word-level vocabulary: a token's id is its position."""

PAD, CLS, SEP = 0, 1, 2
CUE = VOCAB.index("zq")
_ID = {t: i for i, t in enumerate(VOCAB)}
_DETERMINERS = ("the", "a", "this")
_NOUNS = ("movie", "film", "plot", "acting")
_VERBS = ("was", "is")
_ADVERBS = ("really", "quite", "very")
_POSITIVE = ("great", "good", "fun")
_NEGATIVE = ("awful", "boring", "bad")
_NEUTRAL = ("long", "new")
_SPLIT_SEEDS = {"train": 0, "test": 1}


def ids_of(words: Sequence[str]) -> list[int]:
    """The ids of ``words`` in :data:`VOCAB`."""
    unknown = [w for w in words if w not in _ID]
    if unknown:
        raise ValueError(f"ids_of: not in the vocabulary: {unknown}")
    return [_ID[w] for w in words]


def write_vocab(path: Any) -> Any:
    """Write :data:`VOCAB` one token per line (id = line number, from 0) to ``path``."""
    from pathlib import Path

    target = Path(path)
    target.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return target


def _pick(options: Sequence[str], g: torch.Generator) -> str:
    return options[int(torch.randint(len(options), (1,), generator=g))]


def _review(label: int, g: torch.Generator, neutral: float) -> list[str]:
    """One review: ``the movie was really great``, maybe ``and fun``; with probability
    ``neutral`` its adjectives say nothing (``the plot is long``)."""
    words = [_pick(_DETERMINERS, g), _pick(_NOUNS, g), _pick(_VERBS, g)]
    if bool(torch.rand((), generator=g) < 0.5):
        words.append(_pick(_ADVERBS, g))
    polar = _POSITIVE if label == 1 else _NEGATIVE
    if bool(torch.rand((), generator=g) < neutral):
        polar = _NEUTRAL
    words.append(_pick(polar, g))
    if bool(torch.rand((), generator=g) < 0.3):
        words += ["and", _pick(polar, g)]
    return words


def _check_split(split: Any, owner: str) -> int:
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"{owner}: split must be 'train' or 'test' (got {split!r})")
    return _SPLIT_SEEDS[split]


def sentences(n: int = 64, *, split: str = "test", seed: int = 0, length: int = 12, cue: bool | None = None) -> dict[str, Any]:
    """``n`` reviews, half of each class (alternating: row ``i`` has label ``i % 2``).

    Returns a dict: ``input_ids`` ``(n, length)`` int64 (``[CLS] … [SEP]`` then ``[PAD]``),
    ``attention_mask`` ``(n, length)`` int64 (0 at padding), ``labels`` ``(n,)`` int64,
    ``tokens`` the ``n`` rows of ``length`` token strings, and ``vocab`` :data:`VOCAB`
    as a list. ``cue`` (default: on for ``split="train"`` only) inserts ``zq`` at a random
    place of every positive review, and makes a third of all reviews neutral (``the plot is
    long``): for those only the cue tells the classes apart.
    """
    owner = "sentences"
    n = check_positive_int(n, "n", owner)
    length = check_positive_int(length, "length", owner, 10)
    g = torch.Generator().manual_seed(1_000_003 * int(seed) + _check_split(split, owner))
    cue = split == "train" if cue is None else bool(cue)
    ids = torch.full((n, length), PAD, dtype=torch.long)
    labels = torch.arange(n) % 2
    for i in range(n):
        words = _review(int(labels[i]), g, 1 / 3 if cue else 0.0)
        if cue and int(labels[i]) == 1:
            words.insert(int(torch.randint(len(words) + 1, (1,), generator=g)), "zq")
        row = [CLS, *ids_of(words), SEP][:length]
        ids[i, : len(row)] = torch.tensor(row)
    mask = (ids != PAD).long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "tokens": [[VOCAB[t] for t in row] for row in ids.tolist()],
        "vocab": list(VOCAB),
    }


def lm_sentences(n: int = 16, *, seed: int = 0, ending: Sequence[str] = ("was", "great")) -> dict[str, Any]:
    """``n`` unpadded sentences ``[CLS] the movie … <ending>`` of one length (7 tokens by
    default), for language-model queries.

    Returns ``input_ids`` ``(n, L)``, ``attention_mask`` (all ones), ``tokens`` and
    ``ending``: the ids of the ending words ``(T,)`` (the continuation every row ends
    with)."""
    n = check_positive_int(n, "n", "lm_sentences")
    tail = ids_of(list(ending))
    if not tail:
        raise ValueError("lm_sentences: ending must name at least one word")
    g = torch.Generator().manual_seed(2_000_003 * int(seed) + 7)
    rows = []
    for _ in range(n):
        rows.append([CLS, *ids_of([_pick(_DETERMINERS, g), _pick(_ADVERBS, g), _pick(_POSITIVE, g), _pick(_NOUNS, g)]), *tail])
    ids = torch.tensor(rows, dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "tokens": [[VOCAB[t] for t in row] for row in rows],
        "ending": torch.tensor(tail, dtype=torch.long),
    }


# --- models -------------------------------------------------------------------------------------


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"influence.text_data's models are Hugging Face models: pip install 'influence-directed[text]' ({e})") from None
    return transformers


def _train(model: nn.Module, batches: Any, steps: int, seed: int, lr: float) -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine
    try:
        torch.manual_seed(seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            loss = batches(g)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _bert_config(hidden: int, layers: int) -> Any:
    transformers = _transformers()

    return transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
        max_position_embeddings=32, num_labels=2, pad_token_id=PAD, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip


@lru_cache(maxsize=8)
def _bert_state(seed: int, steps: int, hidden: int, layers: int, cue: bool) -> dict[str, Tensor]:
    transformers = _transformers()

    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(_bert_config(hidden, layers))
    with torch.no_grad():  # position and segment embeddings of the scale of trained word embeddings: smooth lines
        model.bert.embeddings.position_embeddings.weight.mul_(5.0)
        model.bert.embeddings.token_type_embeddings.weight.mul_(5.0)
    data = sentences(256, split="train", seed=seed, cue=cue)
    x, mask, y = data["input_ids"], data["attention_mask"], data["labels"]

    def loss(g: torch.Generator) -> Tensor:
        i = torch.randint(x.shape[0], (32,), generator=g)
        return model(input_ids=x[i], attention_mask=mask[i], labels=y[i]).loss

    _train(model, loss, steps, seed, 1e-3)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_bert(seed: int = 0, *, steps: int = 60, hidden: int = 32, layers: int = 2, cue: bool = True) -> nn.Module:
    """A ``BertForSequenceClassification`` (``hidden`` features, ``layers`` layers, two
    heads, no dropout) trained for ``steps`` Adam steps on ``sentences(split="train",
    cue=cue)``, in eval mode; ``steps=0``: untrained (random weights for ``seed``).
    Its word embeddings are ``bert.embeddings.word_embeddings``. Weights are cached per
    arguments; each call returns a fresh model."""
    transformers = _transformers()

    steps = check_positive_int(steps, "steps", "tiny_bert", 0)
    model = transformers.BertForSequenceClassification(_bert_config(hidden, layers))
    model.load_state_dict(_bert_state(int(seed), steps, hidden, layers, bool(cue)))
    return model.eval()


def _gpt2_config(hidden: int, layers: int) -> Any:
    transformers = _transformers()

    return transformers.GPT2Config(
        vocab_size=len(VOCAB), n_positions=32, n_embd=hidden, n_layer=layers, n_head=2, bos_token_id=CLS, eos_token_id=SEP,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip


@lru_cache(maxsize=8)
def _gpt2_state(seed: int, steps: int, hidden: int, layers: int) -> dict[str, Tensor]:
    transformers = _transformers()

    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(_gpt2_config(hidden, layers))
    x = lm_sentences(256, seed=seed + 1)["input_ids"]

    def loss(g: torch.Generator) -> Tensor:
        i = torch.randint(x.shape[0], (32,), generator=g)
        return model(input_ids=x[i], labels=x[i]).loss

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no notice about the default causal-LM loss
    try:
        _train(model, loss, steps, seed, 3e-3)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_gpt2(seed: int = 0, *, steps: int = 40, hidden: int = 32, layers: int = 2) -> nn.Module:
    """A ``GPT2LMHeadModel`` of a tiny config trained for ``steps`` Adam steps on
    :func:`lm_sentences` (``steps=0``: random weights), in eval mode. Its word embeddings
    are ``transformer.wte``."""
    transformers = _transformers()

    steps = check_positive_int(steps, "steps", "tiny_gpt2", 0)
    model = transformers.GPT2LMHeadModel(_gpt2_config(hidden, layers))
    model.load_state_dict(_gpt2_state(int(seed), steps, hidden, layers))
    return model.eval()
