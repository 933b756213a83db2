"""``python -m influence``: the ``influence`` command line."""

from .cli import main

raise SystemExit(main())
