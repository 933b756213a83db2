"""The workflows room: what users do with the engine, end to end.

Holds the Captum-style front door (``methods``), top neurons for a class contrast
(``contrast``), what a neuron sees (``neurons``), the region audit (``audit``), the
essence check (``essence``), deletion/insertion curves (``curves``), reports and pictures
(``report``, ``plots``: matplotlib, the ``viz`` extra), the text-model workflows
(``text``), and the built-in examples with the data they generate (``demo``,
``demo_text``, ``synthetic``, ``text_data``).

May import: ``influence.engine`` (its package names only), ``slices``, ``doi``, ``qoi``
and itself; never ``influence.queries`` (``tests/test_structure.py`` checks this).
"""

from ._labelled import pixel_maps  # for the queries room; not in __all__
from ._rankings import RANKINGS  # for the queries room; not in __all__
from .audit import AuditResult, AuditRow, audit
from .contrast import NeuronEntry, TopNeurons, top_neurons
from .curves import Curves, deletion_insertion
from .essence import EssenceResult, EssenceRow, essence_check, roc_auc
from .neurons import NeuronView, explain_neurons
from .regions import Rect
from .report import Report
from .text import TokenHeatmap, TokenNeuronView, explain_token_neurons, token_audit, token_heatmaps

__all__ = [
    "top_neurons", "TopNeurons", "NeuronEntry",
    "explain_neurons", "NeuronView",
    "audit", "AuditResult", "AuditRow", "Rect",
    "essence_check", "EssenceResult", "EssenceRow", "roc_auc",
    "deletion_insertion", "Curves",
    "Report",
    "token_audit", "explain_token_neurons", "TokenNeuronView", "token_heatmaps", "TokenHeatmap",
]
