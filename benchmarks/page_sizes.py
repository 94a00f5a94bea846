"""Weight of what a run leaves to read and send: reports, plot pages, the run folder, the share zip.

    python benchmarks/page_sizes.py outputs/demo [--baseline OTHER_RUN] [--share]

Prints the size of every report (HTML) and plot page, the totals of reports + plots (the
notebooks aside), the run folder, and with `--share` the `frameatlas share` archive (written to a
temporary folder). With `--baseline` the same figures of another run (e.g. one made by an older
checkout on the same corpus and config) and the ratios. Sizes, not timings: one measurement is exact.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def measure(run: Path, share: bool) -> dict[str, int]:
    """Sizes in bytes by name: each report and page, and the totals."""
    figures: dict[str, int] = {}
    for page in sorted((run / "reports").glob("*.html")) + sorted((run / "plots").glob("*.html")):
        figures[f"{page.parent.name}/{page.name}"] = page.stat().st_size
    shared_files = [
        p for folder in ("reports", "plots") for p in (run / folder).rglob("*") if p.is_file() and p.suffix != ".ipynb"
    ]
    figures["TOTAL reports + plots (no .ipynb)"] = sum(p.stat().st_size for p in shared_files)
    figures["TOTAL run folder"] = _size(run)
    if share:
        from frameatlas.share import share_run

        with tempfile.TemporaryDirectory() as folder:
            figures["share zip (with videos)"] = share_run(run, Path(folder) / "run.zip").size
            figures["share zip (--no-videos)"] = share_run(run, Path(folder) / "light.zip", videos=False).size
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--baseline", type=Path, help="another run folder to compare with")
    parser.add_argument("--share", action="store_true", help="also measure the frameatlas share archive")
    args = parser.parse_args(argv)
    now = measure(args.run, args.share)
    before = measure(args.baseline, False) if args.baseline else {}
    print(f"{'':44} {'baseline MB':>12} {'this MB':>10} {'ratio':>7}")
    for name in sorted(set(now) | set(before), key=lambda n: (n.startswith(("TOTAL", "share")), n)):
        old, new = before.get(name), now.get(name)
        ratio = f"{new / old:7.3f}" if old and new is not None else ""
        print(
            f"{name:44} {old / 1e6 if old else float('nan'):12.2f} {new / 1e6 if new is not None else float('nan'):10.2f} {ratio}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
