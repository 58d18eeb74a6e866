"""``python -m pytest_netlab``: the ``pytest-netlab`` command (see :mod:`pytest_netlab.cli`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
