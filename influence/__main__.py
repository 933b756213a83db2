"""``python -m influence``: the ``influence`` command line."""

from .queries.cli import main

raise SystemExit(main())
