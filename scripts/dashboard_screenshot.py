"""Screenshots of SwanLab's local dashboard for the README (docs/dashboard_*.png).

    python train.py --preset=demo --swanlab_logdir=/tmp/cmp/swanlog --out_dir=/tmp/cmp/runs
    python train.py --preset=demo --arch=resnet34 --learning_rate=3e-4 --mixup_alpha=0 \
        --swanlab_logdir=/tmp/cmp/swanlog --out_dir=/tmp/cmp/runs
    python scripts/dashboard_screenshot.py /tmp/cmp/swanlog

Starts ``swanlab watch`` on a free loopback port and renders the experiment table and the charts page
with headless Chromium (Debian package ``chromium``).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiment.dashboard import get_json, screenshot, serve_dashboard  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", nargs="?", default="swanlog", help="SwanLab local-mode log folder")
    parser.add_argument("--out", default="docs", help="folder for dashboard_table.png and dashboard_charts.png")
    args = parser.parse_args()
    with serve_dashboard(args.log_dir) as url:
        project = get_json(f"{url}/api/v1/project")["data"]
        names = [e["name"] for e in project["experiments"]]
        print(f"{project['name']}: {len(names)} experiment(s): {', '.join(names)}")
        for page, height in (("", 600), ("charts", 1300)):
            png = screenshot(f"{url}/{page}", Path(args.out) / f"dashboard_{page or 'table'}.png", height=height,
                             budget_ms=15000)
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
