"""``influence.query``: the public path of ``influence.queries`` (the same module object):
:func:`parse_query`, :func:`load_query_file`, :class:`QueryError`, :class:`Session` …"""

import sys

from . import queries as _module

sys.modules[__name__] = _module
