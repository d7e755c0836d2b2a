"""How long the review page takes to load and to preview a new threshold on a long run's folder.

    python -m highlightsense.benchmarks.review_load --hours 6 [--chromium /usr/bin/chromium]

writes a finished run's folder for an --hours-long VOD (a window every 5 s: 4,300 for 6 hours;
scores from a random walk, selected by engine.selection.finish as detect selects, no clips, the
source absent), serves it with `highlightsense review --no-browser` and opens the page in
headless Chromium (Playwright through executable_path), then prints: the /api/run answer's size,
the seconds from navigation to the page being drawn (body[data-ready]), and the seconds a
threshold preview takes (request and redraw), each the median of --repeat loads. Not run in CI.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from highlightsense.benchmarks.bench_support import write_finished_run
from highlightsense.engine.config import Config
from highlightsense.operators.select import WindowScore


def make_run(folder: Path, hours: float, stride: float = 5.0, window: float = 30.0) -> int:
    rng = np.random.default_rng(0)
    n = int(hours * 3600 // stride) - int(window // stride) + 1
    walk = np.cumsum(rng.standard_normal(n)) * 0.05
    scores = 1 / (1 + np.exp(-(walk - walk.mean())))
    windows = [WindowScore(i, i * stride, i * stride + window, float(s), i * stride + window / 2)
               for i, s in enumerate(scores)]
    write_finished_run(folder, windows, Config(), source=str(folder / "absent-vod.mp4"),
                       duration_sec=hours * 3600, has_video=True)
    return len(windows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        count = make_run(folder, args.hours)
        server = subprocess.Popen([sys.executable, "-m", "highlightsense", "review", str(folder),
                                   "--no-browser"], stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline()
            url = line[line.index("http://"):].split()[0]
            loads, previews = [], []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                            args=["--no-sandbox"])
                size = len(p.request.new_context().get(url + "api/run").body())
                for _ in range(args.repeat):
                    page = browser.new_page()
                    began = time.perf_counter()
                    page.goto(url)
                    page.wait_for_selector("body[data-ready='1']", timeout=60000)
                    loads.append(time.perf_counter() - began)
                    renders = int(page.evaluate("document.body.dataset.renders || 0"))
                    began = time.perf_counter()
                    page.fill("#threshold", "0.6")
                    page.press("#threshold", "Enter")
                    page.wait_for_function(
                        f"Number(document.body.dataset.renders) > {renders} && "
                        "document.body.dataset.busy !== '1'", timeout=60000)
                    previews.append(time.perf_counter() - began)
                    page.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    print(f"review page, {args.hours:g} h run: {count} windows, /api/run {size / 1024:.0f} KiB")
    print(f"  load to drawn: median {statistics.median(loads):.3f} s "
          f"(min {min(loads):.3f}, max {max(loads):.3f}, {args.repeat} loads)")
    print(f"  threshold preview: median {statistics.median(previews):.3f} s "
          f"(min {min(previews):.3f}, max {max(previews):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
