"""Quantities of interest: which behaviour of the network is explained."""

from ._base import FunctionQoI, LinearQoI, QoIContext, QuantityOfInterest, as_qoi
from ._class import ClassQoI, ComparativeQoI, MaxClassQoI
from ._neuron import NeuronQoI

__all__ = [
    "QuantityOfInterest",
    "QoIContext",
    "ClassQoI",
    "ComparativeQoI",
    "NeuronQoI",
    "MaxClassQoI",
    "LinearQoI",
    "FunctionQoI",
    "as_qoi",
]
