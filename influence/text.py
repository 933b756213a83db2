"""``influence.text``: the public path of ``influence.workflows.text`` (the same module object)."""

import sys

from .workflows import text as _module

sys.modules[__name__] = _module
