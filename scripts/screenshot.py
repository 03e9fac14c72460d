#!/usr/bin/env python3
"""Render a dashboard (``prfaas-bench report`` output) to PNG with headless Chromium, for the README.

    python scripts/screenshot.py results/<run>/report.html -o docs/dashboard.png
    python scripts/screenshot.py report.html --panel server-timeline --height 640 -o docs/telemetry-vllm.png

Chromium runs with a fresh profile and no network. The page is drawn at a device scale below 1 so
the PNG stays under ``--max-kb`` (the README image must stay small); when it does not, the scale is
lowered and the page drawn again.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip


def screenshot(page: Path, out: Path, *, width: int, height: int, scale: float, chromium: str) -> int:
    """Draw ``page`` into ``out`` at ``scale``; returns the PNG size in bytes."""
    with tempfile.TemporaryDirectory(prefix="prfaas-shot-") as profile:
        cmd = [
            chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--force-device-scale-factor={scale}", "--virtual-time-budget=15000",
            f"--screenshot={out.resolve()}", page.resolve().as_uri(),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not out.is_file():
        raise SystemExit(f"chromium wrote no screenshot to {out}")
    return out.stat().st_size


def panel_only(report: Path, panel: str, tmp: Path) -> Path:
    """A copy of ``report`` that shows only the figure whose anchor is ``panel``, full width."""
    text = report.read_text(encoding="utf-8")
    if f'id="{panel}"' not in text:
        raise SystemExit(f"{report}: no panel {panel!r}")
    css = (
        "<style>header, .validity, main > section { display: none; } .grid { display: block; } "
        f".grid > section:not(:has(#{panel})) {{ display: none; }}</style>"
    )
    page = tmp / "panel.html"
    page.write_text(text.replace("</head>", css + "</head>", 1), encoding="utf-8")
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="report.html written by `prfaas-bench report`")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/dashboard.png"))
    ap.add_argument("--width", type=int, default=1200, help="CSS pixels (the layout width)")
    ap.add_argument("--height", type=int, default=2100, help="CSS pixels from the top of the page")
    ap.add_argument("--scale", type=float, default=0.75, help="device scale factor (PNG px per CSS px)")
    ap.add_argument("--max-kb", type=int, default=300, help="shrink the scale until the PNG is below this")
    ap.add_argument("--panel", default=None, help="only this figure (its anchor, e.g. server-timeline)")
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("headless Chromium not found (make install-test installs Debian's chromium)", file=sys.stderr)
        return 2
    if not args.report.is_file():
        print(f"{args.report}: no such report", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="prfaas-panel-")
    page = panel_only(args.report, args.panel, Path(tmp.name)) if args.panel else args.report
    scale = args.scale
    while True:
        size = screenshot(
            page, args.out, width=args.width, height=args.height, scale=scale, chromium=chromium
        )
        if size <= args.max_kb * 1024 or scale <= 0.4:
            break
        scale = round(scale - 0.1, 2)
    tmp.cleanup()
    print(f"{args.out}: {size / 1024:.0f} KB at scale {scale} ({args.width}x{args.height} CSS px)")
    return 0 if size <= args.max_kb * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
