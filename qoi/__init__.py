"""Quantities of interest: which behaviour of the network is explained."""

from ._base import FunctionQoI, LinearQoI, QoIContext, QuantityOfInterest, as_qoi
from ._class import ClassQoI, ComparativeQoI, MaxClassQoI
from ._language import ContinuationQoI, NextTokenQoI
from ._neuron import NeuronQoI

__all__ = [
    "QuantityOfInterest",
    "QoIContext",
    "ClassQoI",
    "ComparativeQoI",
    "NeuronQoI",
    "MaxClassQoI",
    "NextTokenQoI",
    "ContinuationQoI",
    "LinearQoI",
    "FunctionQoI",
    "as_qoi",
]
