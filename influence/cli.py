"""``influence.cli``: the public path of ``influence.queries.cli`` (the same module object)."""

import sys

from .queries import cli as _module

sys.modules[__name__] = _module
