"""One dashboard panel of a run as a PNG, rendered by headless Chromium (for the pictures in docs/).

    .venv/bin/python scripts/panel_screenshot.py RUN_DIR PANEL_ID OUT.png [--width 1100 --height 600]

PANEL_ID is a figure's anchor on the dashboard (``harness.analysis.figures.all_figures``), e.g.
``server-timeline``. The figure is built exactly as the dashboard builds it, on a page of its own.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.analysis import analyze, load_bundle
from harness.analysis.figures import all_figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--panel", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=600)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: headless Chromium not found (chromium or chromium-browser on PATH)", file=sys.stderr)
        return 2
    bundle = load_bundle(args.runs)
    figures = dict(all_figures(bundle, analyze(bundle, n_boot=50)))
    if args.panel not in figures:
        print(f"error: no panel {args.panel!r}; panels: {', '.join(figures)}", file=sys.stderr)
        return 2
    fig = figures[args.panel].update_layout(width=args.width, height=args.height)
    with tempfile.TemporaryDirectory(prefix="panel-") as tmp:
        page = Path(tmp) / "panel.html"
        fig.write_html(page, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp}/profile", f"--window-size={args.width + 16},{args.height + 16}",
             "--virtual-time-budget=10000", f"--screenshot={args.out.resolve()}", page.as_uri()],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
