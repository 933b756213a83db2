"""``influence.demo``: the public path of ``influence.workflows.demo`` (the same module object)."""

import sys

from .workflows import demo as _module

sys.modules[__name__] = _module
