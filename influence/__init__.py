"""Influence-directed explanations: one Monte Carlo engine for saliency, integrated
gradients, SmoothGrad, expected gradients, conductance and internal influence."""

from ._engine import input_influence, internal_influence
from .result import InfluenceResult, Ranked

__all__ = ["internal_influence", "input_influence", "InfluenceResult", "Ranked"]
