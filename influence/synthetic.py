"""``influence.synthetic``: the public path of ``influence.workflows.synthetic`` (the same module object)."""

import sys

from .workflows import synthetic as _module

sys.modules[__name__] = _module
