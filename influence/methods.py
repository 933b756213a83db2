"""``influence.methods``: the public path of ``influence.workflows.methods`` (the same module object)."""

import sys

from .workflows import methods as _module

sys.modules[__name__] = _module
