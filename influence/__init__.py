"""Influence-directed explanations: one Monte Carlo engine for saliency, integrated
gradients, SmoothGrad, expected gradients, conductance and internal influence.

The package has three rooms, and imports run one way, queries → workflows → engine →
``slices``/``doi``/``qoi``:

- ``influence.engine``: the integrator, its moments, checkpoints, distribution, results;
- ``influence.workflows``: top neurons, neurons, audit, essence, curves, reports, plots,
  the demos and their synthetic data, the text workflows, ``methods``;
- ``influence.queries``: YAML query files (schema, kinds, loading, running) and the CLI.

The public paths stay short: ``from influence import …``, ``influence.methods``,
``influence.plots``, ``influence.synthetic``, ``influence.text``, ``influence.text_data``,
``influence.demo``, ``influence.query`` and ``influence.cli`` (small modules here that
stand for the module of the same name in its room).
"""

from . import workflows as _workflows
from .engine import InfluenceResult, Ranked, input_influence, internal_influence
from .workflows import *  # noqa: F403 (the workflows' public names, listed in influence.workflows.__all__)

__all__ = ["internal_influence", "input_influence", "InfluenceResult", "Ranked", *_workflows.__all__]
