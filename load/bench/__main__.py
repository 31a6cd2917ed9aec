"""Entry point for ``python -m load.bench``."""

from load.bench.cli import main

raise SystemExit(main())
