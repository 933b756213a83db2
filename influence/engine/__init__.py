"""The engine room: the batched Monte Carlo integrator and what it needs to run anywhere.

Holds the integrator (``internal_influence``, ``input_influence``), its running moments
and step logs, checkpoints, the ``torch.distributed`` split, the guard that gives a model
back exactly as it came (``frozen``), the layer recorder that ``NeuronQoI`` reads, the
progress bar, and the result type (``InfluenceResult``).

May import: ``slices``, ``doi``, ``qoi`` and itself; never ``influence.workflows`` or
``influence.queries`` (``tests/test_structure.py`` checks this). The other rooms import
the engine through the names below, not through its private modules.
"""

from . import _distributed as distributed
from ._files import atomic_write
from ._frozen import frozen
from ._influence import input_influence, internal_influence
from ._inputs import no_grad_batched
from ._recording import LayerRecorder
from ._tol_warnings import count_missed, tol_counted, tol_noted
from .result import InfluenceResult, Ranked

__all__ = [
    "internal_influence", "input_influence", "InfluenceResult", "Ranked",
    "no_grad_batched", "tol_counted", "count_missed", "tol_noted",
    "frozen", "LayerRecorder", "atomic_write", "distributed",
]
