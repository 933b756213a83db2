"""The queries room: influence queries written in YAML, and the ``influence`` command line.

A query file has a ``model`` and a ``data`` section shared by a list of ``queries``; an
optional ``defaults`` section sets options for every query::

    model:    {factory: "influence.synthetic:trained_cnn", kwargs: {seed: 0}}
    data:     {factory: "influence.synthetic:glyph_images", kwargs: {split: test}}
    queries:
      - name: top_neurons
        slice: res                                # a layer name; null/absent: the input
        doi: {kind: class, label: 3}              # point | line | noise | class | dataset
        qoi: {kind: comparative, a: 3, b: 8}      # class | comparative | neuron | max_class | linear | callable
                                                  # | next_token | continuation
        output: {top: {k: 5, by: channel}}

Text models take the same file: a model factory returning a Hugging Face model; data
whose ``inputs`` map the model's argument names to arrays (``model(**inputs)``; a list
calls ``model(*inputs)``), integer ids and masks kept as integers, every row's tensors
selected together; ``tokens`` for display (an array of token strings, or ``{vocab:
FILE}``). Token ids are explained at the word embeddings, with a line from the pad
token's embedding (``baseline: {token: 0, keep: [1, 2]}``, one baseline per sentence)::

    data:
      factory: "influence.text_data:sentences"
      inputs: {input_ids: input_ids, attention_mask: attention_mask}
      labels: labels
      tokens: tokens
    queries:
      - slice: bert.embeddings.word_embeddings
        doi: {kind: line, space: slice, baseline: {token: 0, keep: [1, 2]}}
        qoi: {kind: class, label: 1}                  # or next_token, continuation (LMs)

Three stages, each usable on its own:

1. :func:`load_query_file` / :func:`parse_query` check the whole file — structure, types,
   names of kinds, that files exist — and return a :class:`QueryFile` of plain, validated
   values. Nothing is imported or loaded (``influence validate``).
2. :meth:`QueryFile.prepare` imports the factories, loads weights and data: a
   :class:`Session`.
3. :meth:`Session.build` turns one query into library objects (``Slice``, DoI, QoI,
   inputs) and checks them against the model and the data with one forward pass on one
   point; :meth:`BuiltQuery.run` calls :func:`influence.internal_influence`.

Every mistake in the file, found at any stage, raises :class:`QueryError` whose ``path``
names the field (``queries[1].doi.steps``). The tables :data:`DOI_KINDS`,
:data:`QOI_KINDS` and the section schemas drive validation, the did-you-mean hints, the
README's schema table, ``influence schema`` and the tests.

Modules, in the order a file meets them: ``checks`` (the validation layer), ``trust``
(which callables a file may name), ``kinds`` (DoI and QoI kinds), ``schema`` (the file's
sections, :func:`parse_query`), ``json_schema`` (the same declarations as JSON Schema:
``influence schema``), ``loading`` (factories, weights, data), ``running``
(:class:`Session`, :class:`BuiltQuery`), ``summaries`` (top-k, regions, tokens),
``_outputs`` (tables, files, reports), ``cli``.

May import: ``influence.workflows`` and ``influence.engine`` (their package names only),
``slices``, ``doi``, ``qoi`` and itself (``tests/test_structure.py`` checks this). Only
the command line and the ``influence.query`` path import this room.
"""

from .checks import QueryError
from .kinds import DOI_KINDS, QOI_KINDS
from .loading import load_data, load_model
from .running import BuiltQuery, Session
from .schema import OPTION_KEYS, SECTIONS, QueryFile, QuerySpec, load_query_file, parse_query

__all__ = [
    "QueryError", "QueryFile", "QuerySpec", "Session", "BuiltQuery",
    "load_query_file", "parse_query", "load_model", "load_data",
    "DOI_KINDS", "QOI_KINDS", "OPTION_KEYS", "SECTIONS",
]
