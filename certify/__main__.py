"""``python -m certify``: see ``certify.cli``."""

from certify.cli import main

raise SystemExit(main())
