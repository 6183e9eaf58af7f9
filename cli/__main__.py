"""``python -m dprobes.cli`` is ``dpc``."""

from dprobes.cli.main import main

raise SystemExit(main())
