"""`make bench` regenerates docs/benchmarks.md without erasing its hand-written notes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_regenerated_report_keeps_the_notes_of_the_file_it_replaces() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from serving import with_notes
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    old = "# Serving benchmark\nold table\n\n## Notes on this run (by hand)\n\nkept\n\n## Earlier round\n\nkept too\n"
    new = with_notes("# Serving benchmark\nnew table\n", old)
    assert (
        new
        == "# Serving benchmark\nnew table\n\n## Notes on this run (by hand)\n\nkept\n\n## Earlier round\n\nkept too\n"
    )
    assert with_notes("# Serving benchmark\nnew table\n", "") == "# Serving benchmark\nnew table\n"
