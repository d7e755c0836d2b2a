"""`highlightsense review DIR`: the real server (a child process on 127.0.0.1) and its page in a
real browser (Debian's chromium, driven by Playwright through executable_path: no browser
download), on small finished runs the tests make with the loudness scorer."""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.cli import main
from highlightsense.engine.timecode import in_name
from processes import wait_for_line

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MOMENTS = [(40.0, 50.0), (95.0, 104.0)]
# Screenshots of the runs, to look at: HS_REVIEW_SHOTS=folder keeps them there.
SHOTS = os.environ.get("HS_REVIEW_SHOTS")


def _vod(folder: Path, name: str, seconds: float = 150) -> Path:
    v = SyntheticVod(seconds, seed=3, moments=[m for m in MOMENTS if m[1] < seconds - 10],
                     music=[], bangs=[(70.0, 70.2)] if seconds > 80 else [])
    return write_media(folder / name, v.blocks(), video=True, fps=10, gop=20)


def _detect(vod: Path, out: Path, *flags) -> Path:
    assert main(["detect", str(vod), "--out", str(out), "-q", *flags]) == 0
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run with clips (mp4 source, stream-copy clips): at the 90th percentile one
    highlight, where a lower threshold gives three."""
    base = tmp_path_factory.mktemp("review")
    return _detect(_vod(base, "stream.mp4"), base / "run", "--threshold-percentile", "90")


@pytest.fixture
def run_dir(finished, tmp_path):
    """A copy of the finished run for one test (the page writes into it)."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    summary = json.loads((out / "highlights.json").read_text())
    for row in summary["highlights"]:  # the copy's clips are its own
        row["clip_path"] = str(out / "clips" / Path(row["clip_path"]).name)
    (out / "highlights.json").write_text(json.dumps(summary, indent=2))
    return out


class Server:
    """`highlightsense review DIR --no-browser` as a child process; its URL from its stdout."""

    def __init__(self, folder: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "highlightsense", "review", str(folder), "--no-browser"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = wait_for_line(self.proc.stdout, b"http://127.0.0.1:", timeout=30).decode()
        self.url = line[line.index("http://"):].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(run_dir):
    s = Server(run_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "these tests need chromium: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


class Page:
    """A page of the browser with its console errors and failed requests collected."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.errors = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.open(url)

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=10000)

    def rows(self):
        return self.page.eval_on_selector_all("#list tbody tr", """rows => rows.map(r => [
            Number(r.dataset.rank), Number(r.dataset.start), Number(r.dataset.end)])""")

    def settled(self) -> None:
        self.page.wait_for_function("document.body.dataset.busy !== '1'", timeout=10000)

    def renders(self) -> int:
        return int(self.page.evaluate("document.body.dataset.renders || 0"))

    def rendered_after(self, count: int) -> None:
        """Waits until the list was drawn again since `count` and no request is out."""
        self.page.wait_for_function(f"Number(document.body.dataset.renders) > {count}",
                                    timeout=10000)
        self.settled()

    def shot(self, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)

    def close(self):
        self.page.close()


def selected(folder: Path):
    rows = json.loads((folder / "highlights.json").read_text())["highlights"]
    return [[r["rank"], r["start_sec"], r["end_sec"]] for r in rows]


def select_copy(run_dir: Path, tmp_path: Path, *flags) -> list:
    """What `highlightsense select` chooses with these flags, on a copy of the run."""
    copy = tmp_path / f"select{len(list(tmp_path.glob('select*')))}"
    shutil.copytree(run_dir, copy)
    assert main(["select", str(copy), "--no-clips", "-q", *flags]) == 0
    return selected(copy)


def test_the_page_loads_clean_and_draws_the_run(server, run_dir, browser):
    page = Page(browser, server.url)
    try:
        p = page.page
        assert page.rows() == selected(run_dir)
        windows = sum(1 for _ in open(run_dir / "raw_window_scores.csv")) - 1
        points = p.eval_on_selector("#chart .curve", "e => e.getAttribute('points')").split()
        assert len(points) == windows
        assert p.locator("#chosen rect").count() == len(selected(run_dir))
        assert "windows" in p.inner_text("#summary")
        assert httpx.get(server.url + "favicon.ico").headers["content-type"].startswith(
            "image/svg")
        page.shot("loaded")
        assert page.errors == []
    finally:
        page.close()


def test_dragging_the_threshold_lists_what_select_chooses(server, run_dir, browser, tmp_path):
    page = Page(browser, server.url)
    try:
        p = page.page
        before = page.rows()
        assert len(before) == 1
        handle = p.locator("#threshold-line .handle")
        box = p.locator("#chart").bounding_box()
        y0 = p.eval_on_selector("#threshold-line .threshold",
                                "e => e.getBoundingClientRect().top")
        x = box["x"] + box["width"] / 2
        assert handle.count() == 1
        p.mouse.move(x, y0)
        p.mouse.down()
        target = box["y"] + box["height"] * 0.75  # a lower threshold: more windows pass
        for k in range(1, 6):
            p.mouse.move(x, y0 + (target - y0) * k / 5)
        p.mouse.up()
        p.wait_for_function("!document.querySelector('#pending').hidden", timeout=10000)
        page.settled()
        threshold = p.input_value("#threshold")
        after = page.rows()
        assert after != before
        assert after == select_copy(run_dir, tmp_path, "--threshold", threshold)
        page.shot("dragged")

        # The control does the same, top N included; Apply runs select itself.
        p.fill("#top-n", "2")
        count = page.renders()
        p.fill("#threshold", "0.05")
        p.press("#threshold", "Enter")
        page.rendered_after(count)
        want = select_copy(run_dir, tmp_path, "--threshold", "0.05", "--top-n", "2")
        assert page.rows() == want
        p.click("#apply")
        p.wait_for_function("document.querySelector('#status').textContent"
                            ".includes('applied')", timeout=20000)
        assert selected(run_dir) == want == page.rows()
        assert json.loads((run_dir / "highlights.json").read_text())["settings"]["threshold"] \
            == 0.05
        assert page.errors == []
    finally:
        page.close()


def _row(p, rank: int):
    return p.locator(f"#list tbody tr[data-rank='{rank}']")


def test_decisions_survive_a_restart_and_feed_labels_cut_and_export(run_dir, browser):
    assert main(["select", str(run_dir), "--threshold-percentile", "0", "-q"]) == 0
    ranks = [r[0] for r in selected(run_dir)]
    assert len(ranks) >= 3
    server = Server(run_dir)
    try:
        page = Page(browser, server.url)
        p = page.page
        _row(p, 1).locator("button.keep").click()
        p.wait_for_selector("#list tbody tr[data-rank='1'].keep")
        _row(p, 1).locator("td.note input").fill("the clutch, keep the ending")
        _row(p, 1).locator("td.note input").press("Tab")  # change: saved at once
        _row(p, 2).locator("button.drop").click()
        p.wait_for_selector("#list tbody tr[data-rank='2'].drop")
        p.wait_for_function("document.querySelector('#status').textContent.startsWith('saved')")
        review = json.loads((run_dir / "review.json").read_text())
        assert review["decisions"]["1"]["keep"] is True
        assert review["decisions"]["1"]["note"] == "the clutch, keep the ending"
        assert review["decisions"]["2"]["keep"] is False
        page.open(server.url)  # a reload shows them
        assert _row(p, 1).get_attribute("class") == "keep"
        page.close()
    finally:
        server.stop()

    server = Server(run_dir)  # a restart shows them too
    try:
        page = Page(browser, server.url)
        p = page.page
        assert _row(p, 1).get_attribute("class") == "keep"
        assert _row(p, 2).get_attribute("class") == "drop"
        assert _row(p, 1).locator("td.note input").input_value() == "the clutch, keep the ending"
        page.shot("decided")

        p.click("#labels")
        p.wait_for_function("document.querySelector('#status').textContent.includes('labels')")
        with open(run_dir / "labels.csv", newline="") as f:
            labels = list(csv.reader(f))
        rows = {h["rank"]: h
                for h in json.loads((run_dir / "highlights.json").read_text())["highlights"]}
        source = json.loads((run_dir / "highlights.json").read_text())["source"]
        assert labels[0] == ["source", "start_sec", "end_sec", "label", "note"]
        assert labels[1:] == [
            [source, repr(rows[1]["start_sec"]), repr(rows[1]["end_sec"]), "1",
             "the clutch, keep the ending"],
            [source, repr(rows[2]["start_sec"]), repr(rows[2]["end_sec"]), "0", ""]]

        p.click("#cut")  # every highlight but the dropped one, renumbered among the kept
        p.wait_for_function("document.querySelector('#status').textContent.startsWith('cut')",
                            timeout=20000)
        kept = [r for r in ranks if r != 2]
        names = sorted(f.name for f in (run_dir / "kept").iterdir())
        assert len(names) == len(kept)
        for i, rank in enumerate(kept, 1):
            assert names[i - 1].startswith(f"highlight_{i:02d}_")
            assert in_name(rows[rank]["start_sec"]) in names[i - 1]

        formats = p.eval_on_selector_all("#format option", "os => os.map(o => o.value)")
        if "csv-segments" in formats:  # operators/sinks/timelines.py: `export`
            p.select_option("#format", "csv-segments")
            p.click("#export")
            p.wait_for_function("document.querySelector('#status').textContent"
                                ".startsWith('wrote')", timeout=20000)
            assert (run_dir / "timeline.csv").exists()
            lines = (run_dir / "timeline.csv").read_text().strip().splitlines()
            assert len(lines) == len(kept)  # LosslessCut's CSV: a segment a line, no header
        assert page.errors == []
        page.close()
    finally:
        server.stop()


def test_a_highlight_plays_in_place(server, run_dir, browser):
    page = Page(browser, server.url)
    try:
        p = page.page
        _row(p, 1).locator("button.play-button").click()
        p.wait_for_function("(() => { const v = document.querySelector('#list video');"
                            " return v && v.currentTime > 0.3 && !v.paused; })()",
                            timeout=15000)
        src = p.eval_on_selector("#list video", "v => v.currentSrc")
        assert src.endswith("/media/clip/1")
        page.shot("playing")

        # A preview's window has no clip yet: the source plays, seeked to it (Range requests).
        count = page.renders()
        p.fill("#threshold", "0.05")
        p.press("#threshold", "Enter")
        page.rendered_after(count)
        start = float(_row(p, 2).get_attribute("data-start"))
        _row(p, 2).locator("button.play-button").click()
        p.wait_for_function("(() => { const v = document.querySelector('#list video');"
                            f" return v && v.currentTime > {start + 0.3} && !v.paused; }})()",
                            timeout=15000)
        assert p.eval_on_selector("#list video", "v => v.currentSrc").endswith("/media/source")
        assert page.errors == []
    finally:
        page.close()


def raw_get(port: int, target: str, host: str = "127.0.0.1") -> tuple:
    """GET with the request target exactly as given (a client library would normalise
    `..` away): (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_range_requests_and_refused_paths(server, run_dir):
    clip = httpx.get(server.url + "media/clip/1", headers={"Range": "bytes=0-99"})
    assert clip.status_code == 206 and len(clip.content) == 100
    assert clip.headers["content-range"].startswith("bytes 0-99/")
    size = int(clip.headers["content-range"].rsplit("/", 1)[1])
    assert size == os.path.getsize(selected_clip(run_dir))
    source = json.loads((run_dir / "highlights.json").read_text())["source"]
    tail = httpx.get(server.url + "media/source", headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206
    with open(source, "rb") as f:
        assert tail.content == f.read()[1000:]

    # Nothing outside the run's files and its source, however the path is spelled.
    (run_dir / "kept").mkdir()
    os.symlink("/etc/passwd", run_dir / "kept" / "highlight_01_0h00m00s.mp4")
    outside = ["/page/../../../../etc/passwd", "/page/..%2f..%2f..%2fpyproject.toml",
               "/page/%2e%2e/%2e%2e/engine/review.py", "/media/kept/..%2fhighlights.json",
               "/media/kept/../../../etc/passwd", "/media/kept/highlight_01_0h00m00s.mp4",
               "/media/clip/../../etc/passwd", "/media/clip/99", "/media/window/..%2f..",
               "/..%2f..%2f..%2fetc%2fpasswd", "/media/source/../../etc/passwd",
               "//etc/passwd", "/page/index.html/../../highlights.json",
               "/page/review.py", "/highlights.json", "/raw_window_scores.csv"]
    for target in outside:
        status, body = raw_get(server.port, target)
        assert status in (400, 404), target
        assert b"root:" not in body and b"window_index" not in body, target
    # Another Host (a rebinding page) and a cross-site form post are refused.
    assert raw_get(server.port, "/api/run", host="evil.example")[0] == 400
    form = httpx.post(server.url + "api/decision", data={"rank": "1", "keep": "true"})
    assert form.status_code == 400
    assert not (run_dir / "review.json").exists()


def selected_clip(run_dir: Path) -> str:
    return json.loads((run_dir / "highlights.json").read_text())["highlights"][0]["clip_path"]


def test_an_mpeg_ts_source_without_clips_plays_from_a_window_cut_on_demand(
        browser, tmp_path_factory):
    base = tmp_path_factory.mktemp("ts")
    run_dir = _detect(_vod(base, "stream.ts", 70), base / "run", "--no-clips")
    server = Server(run_dir)
    try:
        assert httpx.get(server.url + "media/source").status_code == 404  # not as it is
        page = Page(browser, server.url)
        p = page.page
        _row(p, 1).locator("button.play-button").click()
        p.wait_for_function("(() => { const v = document.querySelector('#list video');"
                            " return v && v.currentTime > 0.3; })()", timeout=15000)
        src = p.eval_on_selector("#list video", "v => v.currentSrc")
        assert "/media/window/" in src
        part = httpx.get(src, headers={"Range": "bytes=0-15"})
        assert part.status_code == 206 and part.content[4:8] == b"ftyp"
        assert page.errors == []
        page.close()
    finally:
        server.stop()


# ---- the API in process (Starlette's TestClient): what the page relies on, without a browser --

@pytest.fixture
def client(run_dir):
    from starlette.testclient import TestClient

    from highlightsense.engine.review import make_app

    with TestClient(make_app(run_dir), base_url="http://127.0.0.1") as c:
        yield c


@pytest.mark.parametrize("flags", [
    {"threshold_percentile": 50.0}, {"threshold": 0.3, "top_n": 1}, {"nms_window": 40.0},
    {"threshold_percentile": 0.0, "top_n": 2}])
def test_a_preview_is_what_select_chooses(client, run_dir, tmp_path, flags):
    got = client.post("/api/preview", json=flags).json()
    argv = [f"--{k.replace('_', '-')}" + f"={v:g}" for k, v in flags.items()]
    want = select_copy(run_dir, tmp_path, *argv)
    assert [[r["rank"], r["start_sec"], r["end_sec"]] for r in got["highlights"]] == want
    assert not (run_dir / "review.json").exists()  # a preview writes nothing
    assert selected(run_dir) == selected(run_dir.parent / "run")


def test_decisions_follow_their_windows_when_select_changes_the_ranks(client, run_dir):
    def apply(**flags):
        r = client.post("/api/apply", json=flags)
        assert r.status_code == 200, r.text
        return {row[1]: str(row[0]) for row in selected(run_dir)}  # start: rank

    ranks = apply(threshold_percentile=0.0)
    assert len(ranks) == 3
    notes = {}
    for (start, rank), (keep, note) in zip(ranks.items(), [(True, "best"), (False, "weak"),
                                                           (None, "maybe")]):
        r = client.post("/api/decision", json={"rank": int(rank), "keep": keep, "note": note})
        assert r.status_code == 200, r.text
        notes[start] = note
    saved = json.loads((run_dir / "review.json").read_text())["decisions"]
    assert "keep" not in saved["3"] and saved["3"]["note"] == "maybe"  # undecided

    def check(ranks):
        review = json.loads((run_dir / "review.json").read_text())
        for start, note in notes.items():
            if start in ranks:
                assert review["decisions"][ranks[start]]["note"] == note
            else:
                assert note in [d["note"] for d in review["unmatched"]]
        assert len(review["decisions"]) + len(review.get("unmatched", [])) == 3
        return review

    wider = apply(nms_window=70.0)  # a wider NMS: another second window, the third gone
    assert set(wider) != set(ranks)
    assert check(wider)["unmatched"]
    back = apply(nms_window=10.0)  # the first selection again: every decision back in place
    assert back == ranks
    assert check(back)["unmatched"] == []


def test_bad_requests_are_one_line_errors(client):
    assert client.post("/api/decision", json={"rank": 99, "keep": True}).status_code == 404
    assert client.post("/api/decision", json={"rank": 1, "keep": "yes"}).status_code == 400
    assert client.post("/api/preview", json={"top_n": "many"}).status_code == 400
    assert client.post("/api/preview", content=b"[1]",
                       headers={"Content-Type": "application/json"}).status_code == 400
    assert client.get("/api/run", headers={"Host": "example.com"}).status_code == 400


def test_review_needs_a_finished_run_and_stops_on_ctrl_c(run_dir, tmp_path, capsys):
    assert main(["review", str(tmp_path / "gone"), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and err.count("\n") == 1
    import signal

    from processes import interruptible

    proc = subprocess.Popen(
        [sys.executable, "-m", "highlightsense", "review", str(run_dir), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible)
    wait_for_line(proc.stdout, b"http://127.0.0.1:", timeout=30)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and b"review stopped" in err and b"Traceback" not in err
