"""``influence.text_data``: the public path of ``influence.workflows.text_data`` (the same module object)."""

import sys

from .workflows import text_data as _module

sys.modules[__name__] = _module
