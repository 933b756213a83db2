"""``influence.query``: the public path of ``influence.queries.query`` (the same module object)."""

import sys

from .queries import query as _module

sys.modules[__name__] = _module
