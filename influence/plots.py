"""``influence.plots``: the public path of ``influence.workflows.plots`` (the same module object)."""

import sys

from .workflows import plots as _module

sys.modules[__name__] = _module
