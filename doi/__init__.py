"""Distributions of interest: which inputs an explanation must be faithful on."""

from ._base import DistributionOfInterest, PointwiseDoI, PopulationDoI, Rows
from ._line import LineDoI
from ._noise import NoiseDoI
from ._point import PointDoI
from ._population import ClassDoI, DatasetDoI
from ._quadrature import RULES, nodes_and_weights

__all__ = [
    "DistributionOfInterest",
    "PointwiseDoI",
    "PopulationDoI",
    "Rows",
    "PointDoI",
    "LineDoI",
    "NoiseDoI",
    "ClassDoI",
    "DatasetDoI",
    "RULES",
    "nodes_and_weights",
]
