"""`highlightsense review DIR`: a local page to look at a finished run's highlights and decide.

A Starlette app on 127.0.0.1 (a free port) serving one page (operators/sinks/review_page/) and a
small JSON API over the run's folder:

GET  /api/run        the windows' scores, the saved selection, its settings, the decisions
POST /api/preview    choose again with new settings ({"threshold": ABS} or
                     {"threshold_percentile": P}, "top_n", "nms_window"): the same
                     configuration and the same `choose` as `select`, nothing written
POST /api/apply      `select` itself (engine.selection.reselect): tables, plot and clips
                     rewritten; the decisions follow their windows to the new ranks
POST /api/decision   {"rank", "keep": true|false|null, "note"}: saved at once to review.json
POST /api/cut        "cut these": the kept highlights into DIR/kept/, renumbered among the kept
POST /api/labels     DIR/labels.csv (source, start_sec, end_sec, label 1 keep / 0 drop, note)
POST /api/export     a timeline (operators/sinks/timelines.py) of the kept highlights
POST /api/window     a clip of [start, end) cut on demand (sources a browser cannot play,
                     MPEG-TS, Matroska, ...), served from a temporary folder
GET  /media/...      clips, kept clips, the source (FileResponse: HTTP Range) by rank or name

No route takes a path from the client: files are named by rank, by a clip name that must match
CLIP_NAME inside the run's clips/ or kept/ folder, or by a cache id the server handed out; every
path is resolved and checked to lie inside its folder, and links are refused. Requests must be
addressed to 127.0.0.1 or localhost (no DNS rebinding), and POSTs must be JSON (a cross-site form
cannot send it without a preflight this server never grants).
"""
import contextlib
import csv
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional

from highlightsense.engine.config import Config
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.engine.files import write_text
from highlightsense.engine import selection as sel
from highlightsense.operators.sinks import tables
from highlightsense.operators.sinks.decisions import REVIEW_JSON, read_review
from highlightsense.operators.sinks.timelines import FORMATS, export_run, parse_formats

log = logging.getLogger("highlightsense")

LABELS_CSV = "labels.csv"
KEPT_DIR = "kept"
LABEL_COLUMNS = ["source", "start_sec", "end_sec", "label", "note"]
# The page's files: only these names are served from its folder.
PAGE_FILES = {"index.html": "text/html; charset=utf-8",
              "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8",
              "favicon.svg": "image/svg+xml"}
# What Chromium plays from the file itself (seeked to the window); others are cut on demand.
PLAYABLE = {".mp4", ".m4v", ".m4a", ".mov", ".webm", ".mp3", ".ogg", ".oga", ".opus", ".wav",
            ".flac", ".aac"}


def _page_dir() -> Path:
    """The page's folder, installed as package data beside the sinks."""
    from highlightsense.operators import sinks

    return Path(sinks.__file__).resolve().parent / "review_page"


def _inside(path: Path, folder: Path) -> Optional[Path]:
    """path, resolved, when it is a regular file (not a link) inside folder; else None."""
    try:
        if path.is_symlink():
            return None
        real, root = path.resolve(strict=True), folder.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if root not in real.parents or not real.is_file():
        return None
    return real


class Review:
    """A finished run's folder and what the page decided about it. Thread-safe: Starlette runs
    the sync endpoints in a thread pool."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir).resolve()
        sel.last_settings(self.out_dir)  # refuses a folder without a finished run
        self.lock = threading.RLock()
        self.cache = Path(tempfile.mkdtemp(prefix="highlightsense-review-"))
        self.cached: Dict[str, dict] = {}  # id -> {"path", "start", "end", "public"}
        self.windows = tables.read_scores(self.out_dir)

    def close(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)

    # --- the run -----------------------------------------------------------------------------

    def summary(self) -> dict:
        """highlights.json; under the lock, since `apply` (select) replaces it."""
        with self.lock:
            return tables.read_summary(self.out_dir)

    def source(self) -> str:
        return self.summary()["source"]

    def source_file(self) -> Optional[Path]:
        from highlightsense.operators.sources.resolve import is_url

        src = self.source()
        if is_url(src) or not os.path.isfile(src):
            return None
        return Path(src)

    def play_mode(self) -> str:
        """How a window without a clip file plays: "source" (the file, seeked), "window" (a clip
        cut on demand) or "none" (a URL source, or the source is gone)."""
        src = self.source_file()
        if src is None:
            return "none"
        return "source" if src.suffix.lower() in PLAYABLE else "window"

    def config(self, given: Optional[dict] = None) -> Config:
        """The settings `select` would run with, given these of the page's settings."""
        overrides = {k: v for k, v in (given or {}).items()
                     if k in ("threshold", "threshold_percentile", "top_n", "nms_window")}
        with self.lock:  # apply (select) replaces highlights.json
            return sel.select_config(self.out_dir, None, overrides)[0]

    def state(self) -> dict:
        with self.lock:
            saved = self.summary()
            cfg = self.config()
            rows = saved.get("highlights", [])
            return {
                "source": saved["source"], "name": Path(saved["source"]).name,
                "duration_sec": saved.get("duration_sec"), "origin_sec": saved.get("origin_sec", 0.0),
                "has_video": saved.get("has_video", False),
                "windows": [[w.start_sec, w.end_sec, w.confidence] for w in self.windows],
                "settings": saved.get("settings", {}), "threshold": saved.get("threshold"),
                "summary": sel.summary(self.windows, sel.choose(self.windows, cfg), cfg),
                "highlights": self._with_media(rows),
                "play_mode": self.play_mode(),
                "decisions": self.read_decisions()["decisions"],
                "export_formats": list(FORMATS),
            }

    def _with_media(self, rows: List[dict]) -> List[dict]:
        out = []
        for row in rows:
            r = {k: row.get(k) for k in ("rank", "start_sec", "end_sec", "start_ts", "end_ts",
                                         "confidence", "peak_sec", "clip_start_sec",
                                         "clip_end_sec")}
            r["clip"] = self.clip_file(r["rank"], rows) is not None
            out.append(r)
        return out

    def preview(self, given: dict) -> dict:
        """What `select` with these flags would choose (engine.selection.choose), written
        nowhere; rows as its table's, in its order."""
        cfg = self.config(given)
        chosen = sel.choose(self.windows, cfg)
        rows = tables.highlight_rows(chosen, None)
        if cfg.order == "time":
            rows.sort(key=lambda r: r["start_sec"])
        highlights = self.summary().get("highlights", [])
        saved = {(r["start_sec"], r["end_sec"]): r["rank"] for r in highlights}
        rows = [dict(r, saved_rank=saved.get((r["start_sec"], r["end_sec"]))) for r in rows]
        same = [r["saved_rank"] for r in rows] == [r["rank"] for r in highlights]
        return {"threshold": chosen.threshold, "settings": cfg.selection_settings(),
                "highlights": rows, "summary": sel.summary(self.windows, chosen, cfg),
                "same_as_saved": same}

    def apply(self, given: dict) -> dict:
        """`select` with these flags: the run's outputs rewritten; each decision moves to its
        window's new rank, and those whose window is no longer chosen are kept aside
        ("unmatched") rather than lost, to come back when a later selection chooses it again."""
        with self.lock:
            before = {r["rank"]: r for r in self.summary().get("highlights", [])}
            outcome = sel.reselect(self.out_dir, self.config(given))
            review = self.read_decisions()
            by_window = {(r["start_sec"], r["end_sec"]): r["rank"] for r in outcome.highlights}
            moved, unmatched = {}, []
            candidates = [(before.get(int(rank)), d) for rank, d in review["decisions"].items()]
            candidates += [(None, d) for d in review.get("unmatched", [])]
            for old, d in candidates:  # a decision set aside comes back with its window
                span = (d.get("start_sec", old and old["start_sec"]),
                        d.get("end_sec", old and old["end_sec"]))
                if span in by_window and str(by_window[span]) not in moved:
                    moved[str(by_window[span])] = dict(d, start_sec=span[0], end_sec=span[1])
                else:
                    unmatched.append(d)
            review["decisions"] = moved
            review["unmatched"] = unmatched
            self._write_review(review)
            return self.state()

    # --- decisions -----------------------------------------------------------------------------

    def read_decisions(self) -> dict:
        return read_review(self.out_dir)

    def _write_review(self, review: dict) -> None:
        review["source"] = self.source()
        write_text(self.out_dir / REVIEW_JSON, json.dumps(review, indent=2) + "\n")

    def decide(self, rank: int, keep, note: str) -> dict:
        if keep not in (True, False, None) or not isinstance(note, str):
            raise ValueError("keep must be true, false or null, and note a string")
        with self.lock:
            row = next((r for r in self.summary().get("highlights", []) if r["rank"] == rank),
                       None)
            if row is None:
                raise KeyError(rank)
            review = self.read_decisions()
            if keep is None and not note:
                review["decisions"].pop(str(rank), None)
            else:  # undecided: no "keep" key (decisions.py reads that as kept)
                entry = {"keep": keep} if keep is not None else {}
                entry.update(note=note, start_sec=row["start_sec"], end_sec=row["end_sec"])
                review["decisions"][str(rank)] = entry
            self._write_review(review)
            return review["decisions"]

    def kept(self) -> List[dict]:
        """The saved highlights the review keeps, by rank: all but the dropped ones (an
        undecided one counts as kept, as for `export`: operators/sinks/decisions.py)."""
        decisions = self.read_decisions()["decisions"]
        rows = sorted(self.summary().get("highlights", []), key=lambda r: r["rank"])
        return [r for r in rows if decisions.get(str(r["rank"]), {}).get("keep") is not False]

    def labels(self) -> dict:
        """labels.csv: one row per decided highlight (1 keep, 0 drop), by rank."""
        with self.lock:
            decisions = self.read_decisions()["decisions"]
            source = self.source()
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(LABEL_COLUMNS)
            n = 0
            for r in sorted(self.summary().get("highlights", []), key=lambda r: r["rank"]):
                d = decisions.get(str(r["rank"]))
                if d is None or d.get("keep") is None:
                    continue
                writer.writerow([source, repr(float(r["start_sec"])), repr(float(r["end_sec"])),
                                 1 if d["keep"] else 0, d.get("note", "")])
                n += 1
            write_text(self.out_dir / LABELS_CSV, buf.getvalue())
            return {"path": str(self.out_dir / LABELS_CSV), "rows": n}

    def cut_kept(self) -> dict:
        """"cut these": the kept highlights into DIR/kept/, named by their rank among the kept
        (highlight_01_... is the best kept one); clips of an earlier cut no longer kept go."""
        from highlightsense.operators.sinks.clips import cut_clips
        from highlightsense.operators.sources.resolve import is_url

        with self.lock:
            kept = self.kept()
            info = self.summary()
            folder = self.out_dir / KEPT_DIR
            if not kept:
                sel.remove_stale_clips(folder, set())
                return {"clips": [], "folder": str(folder)}
            if is_url(info["source"]):
                from highlightsense.operators.sinks.remote_clips import cut_url_clips as cut
                extra = dict(timeline=info.get("timeline"))
            else:
                if self.source_file() is None:
                    raise HighlightSenseError(f"the source {info['source']} is gone")
                cut, extra = cut_clips, {}
            folder.mkdir(exist_ok=True)
            exact = bool(info.get("settings", {}).get("exact_cuts"))
            clips = cut(info["source"], folder, [(r["start_sec"], r["end_sec"]) for r in kept],
                        origin_sec=info.get("origin_sec", 0.0), exact=exact,
                        stream_index=info.get("audio_stream"), **extra)
            sel.remove_stale_clips(folder, {c.path.name for c in clips})
            return {"folder": str(folder), "clips": [
                {"name": c.path.name, "rank": r["rank"], "kept_rank": i}
                for i, (c, r) in enumerate(zip(clips, kept), 1)]}

    # --- media ---------------------------------------------------------------------------------

    def clip_file(self, rank: int, rows: Optional[List[dict]] = None) -> Optional[Path]:
        """The clip of the saved highlight `rank`, if it lies in the run's clips/ folder."""
        rows = self.summary().get("highlights", []) if rows is None else rows
        row = next((r for r in rows if r["rank"] == rank), None)
        if row is None or not row.get("clip_path"):
            return None
        return _inside(Path(row["clip_path"]), self.out_dir / "clips")

    def kept_file(self, name: str) -> Optional[Path]:
        from highlightsense.operators.sinks.clips import CLIP_NAME

        if not CLIP_NAME.fullmatch(name):
            return None
        return _inside(self.out_dir / KEPT_DIR / name, self.out_dir / KEPT_DIR)

    def window_clip(self, start: float, end: float) -> dict:
        """A clip of [start, end) for a source the browser cannot play, cut once (stream copy,
        as `detect` cuts) into the server's temporary folder."""
        from highlightsense.operators.sinks.clips import cut_clip

        src = self.source_file()
        if src is None:
            raise HighlightSenseError("the source is not a local file")
        info = self.summary()
        duration = float(info.get("duration_sec") or end)
        start, end = max(0.0, float(start)), min(float(end), duration)
        if not end > start:
            raise ValueError("the window is empty")
        with self.lock:
            key = f"w{len(self.cached)}"
            for k, c in self.cached.items():
                if c["start"] == start and c["end"] == end:
                    return {"id": k, **c["public"]}
            clip = cut_clip(str(src), self.cache / key, start, end,
                            origin_sec=info.get("origin_sec", 0.0),
                            stream_index=info.get("audio_stream"))
            public = {"url": f"/media/window/{key}", "clip_start_sec": clip.start_sec,
                      "clip_end_sec": clip.end_sec}
            self.cached[key] = {"path": clip.path, "start": start, "end": end, "public": public}
            return {"id": key, **public}


def export(review: Review, fmt: str) -> dict:
    """DIR/timeline.<ext> in `fmt` of the kept highlights: `highlightsense export DIR --format
    fmt` (operators/sinks/timelines.export_run leaves out what review.json drops)."""
    with review.lock:
        done = export_run(review.out_dir, parse_formats(fmt))
    return {"written": [str(p) for p in done.paths.values()], "count": done.count,
            "notes": done.notes}


# --- the app -------------------------------------------------------------------------------------

def make_app(out_dir, ready=None):
    """The app over the run in out_dir; ready() is called once it has started (uvicorn then
    handles Ctrl-C)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    review = Review(out_dir)
    page = _page_dir()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def page_file(request):
        name = request.path_params.get("name", "index.html")
        if name not in PAGE_FILES:
            return error(404, "not found")
        return FileResponse(page / name, media_type=PAGE_FILES[name],
                            headers={"Cache-Control": "no-cache"})

    def favicon(request):
        return FileResponse(page / "favicon.svg", media_type="image/svg+xml")

    async def body(request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ValueError("send JSON (Content-Type: application/json)")
        data = await request.json()
        if not isinstance(data, dict):
            raise ValueError("send a JSON object")
        return data

    def handler(fn):
        """A JSON endpoint: its body parsed, run in a thread (it may cut clips), errors as
        {"error": ...} with a status."""
        from starlette.concurrency import run_in_threadpool

        async def endpoint(request):
            try:
                data = await body(request) if request.method == "POST" else {}
                return JSONResponse(await run_in_threadpool(fn, data))
            except KeyError as e:
                return error(404, f"no highlight {e}")
            except (ValueError, TypeError) as e:
                return error(400, str(e))
            except HighlightSenseError as e:
                return error(409, str(e))
        return endpoint

    def numbers(data: dict) -> dict:
        given = {}
        for key, kind in (("threshold", float), ("threshold_percentile", float),
                          ("top_n", int), ("nms_window", float)):
            if data.get(key) is not None:
                given[key] = kind(data[key])
        return given

    def decision(data):
        return {"decisions": review.decide(int(data["rank"]), data.get("keep"),
                                           data.get("note", ""))}

    def media_clip(request):
        path = review.clip_file(request.path_params["rank"])
        return FileResponse(path) if path else error(404, "no such clip")

    def media_kept(request):
        path = review.kept_file(request.path_params["name"])
        return FileResponse(path) if path else error(404, "no such clip")

    def media_source(request):
        path = review.source_file()
        if path is None or review.play_mode() != "source":
            return error(404, "the source is not served (a URL, gone, or not playable as is)")
        return FileResponse(path)

    def media_window(request):
        c = review.cached.get(request.path_params["key"])
        if c is None:
            return error(404, "no such window")
        return FileResponse(c["path"])

    routes = [
        Route("/", page_file),
        Route("/favicon.ico", favicon),
        Route("/page/{name}", page_file),
        Route("/api/run", handler(lambda d: review.state())),
        Route("/api/preview", handler(lambda d: review.preview(numbers(d))), methods=["POST"]),
        Route("/api/apply", handler(lambda d: review.apply(numbers(d))), methods=["POST"]),
        Route("/api/decision", handler(decision), methods=["POST"]),
        Route("/api/cut", handler(lambda d: review.cut_kept()), methods=["POST"]),
        Route("/api/labels", handler(lambda d: review.labels()), methods=["POST"]),
        Route("/api/export", handler(lambda d: export(review, str(d.get("format", "")))),
              methods=["POST"]),
        Route("/api/window", handler(lambda d: review.window_clip(d["start"], d["end"])),
              methods=["POST"]),
        Route("/media/clip/{rank:int}", media_clip),
        Route("/media/kept/{name}", media_kept),
        Route("/media/source", media_source),
        Route("/media/window/{key}", media_window),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        if ready is not None:
            ready()
        yield
        review.close()

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])])
    app.state.review = review
    return app


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)  # connections wait in the backlog until the server accepts them
    return sock


def serve(out_dir, open_browser: bool = True, port: int = 0) -> int:
    """Serve the review page until Ctrl-C; the URL printed (stdout, flushed) once it serves."""
    import sys

    import uvicorn

    def ready():  # the server runs and uvicorn has its Ctrl-C handler: say where it is
        print(f"reviewing {Path(out_dir)} at {url} (Ctrl-C stops)", flush=True)
        if open_browser:
            import webbrowser

            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    app = make_app(out_dir, ready)  # refuses a folder without a finished run, before binding
    try:
        sock = free_socket() if not port else socket.create_server(("127.0.0.1", port))
    except OSError as e:
        raise HighlightSenseError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}; "
                                  f"give another --port, or none for a free one") from None
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed Ctrl-C on
        pass
    finally:
        sock.close()
    print("review stopped; the decisions are in "
          f"{Path(out_dir) / REVIEW_JSON}", file=sys.stderr)
    return 0
