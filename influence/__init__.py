"""Influence-directed explanations: one Monte Carlo engine for saliency, integrated
gradients, SmoothGrad, expected gradients, conductance and internal influence."""

from ._engine import input_influence, internal_influence
from .result import InfluenceResult, Ranked

__all__ = ["internal_influence", "input_influence", "InfluenceResult", "Ranked"]

# The workflows (issue 6): top neurons for a contrast, what a neuron sees, the region
# audit, the essence check, deletion/insertion curves, reports. Pictures live in
# ``influence.plots`` (matplotlib: the ``viz`` extra), the demo in ``influence.demo``.
# Text models (token audit, neurons as token heatmaps) in ``influence.text``.
from .audit import AuditResult, AuditRow, audit
from .contrast import NeuronEntry, TopNeurons, top_neurons
from .curves import Curves, deletion_insertion
from .essence import EssenceResult, EssenceRow, essence_check, roc_auc
from .neurons import NeuronView, explain_neurons
from .report import Report
from .text import TokenHeatmap, TokenNeuronView, explain_token_neurons, token_audit, token_heatmaps

__all__ += [
    "top_neurons", "TopNeurons", "NeuronEntry",
    "explain_neurons", "NeuronView",
    "audit", "AuditResult", "AuditRow",
    "essence_check", "EssenceResult", "EssenceRow", "roc_auc",
    "deletion_insertion", "Curves",
    "Report",
    "token_audit", "explain_token_neurons", "TokenNeuronView", "token_heatmaps", "TokenHeatmap",
]
