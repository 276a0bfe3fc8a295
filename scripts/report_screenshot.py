"""A picture of a run's HTML report, as a browser shows it (for READMEs and lab guides).

    python3 scripts/report_screenshot.py RUN_DIR OUT.png [--down-to '#ladder'] [--width 1100]

Renders the run's HTML report, opens it in headless chromium with no network
(tests/browser.py) and saves a PNG from the top of the page down to the bottom
of the element ``--down-to`` (the whole page with ``--down-to ''``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl import api  # noqa: E402
from tests.browser import Browser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--down-to", default="#ladder")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labctl-shot-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(api.report([args.run_dir], format="html"))
        with Browser() as browser:
            loaded = browser.load(page, screenshot=True, width=args.width, down_to=args.down_to or None)
    if loaded.errors:
        sys.exit(f"the page had errors: {loaded.errors}")
    args.out.write_bytes(loaded.screenshot)
    print(f"wrote {args.out} ({len(loaded.screenshot) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
