from __future__ import annotations

from modelops.cli import main

raise SystemExit(main())
