"""Issue 17's findings on what the tool reads back or writes inside --out (8, 9), its model files
(13), its settings (10) and its webhook (12): each attack made with a real crafted file, link,
model or local server, and the outcome asserted: a one-line error and a non-zero exit, or the
documented recovery, and nothing of the user's lost.

Runs are in-process (engine.cli.main) on a 45 s video with the loudness scorer."""
import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import pytest

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine import detect as detect_module
from highlightsense.engine.cli import main
from highlightsense.engine.resume import RECORD_NAME

SETTINGS = ["--threshold-percentile", "80", "--top-n", "2", "-q"]


def run(capsys, *args) -> tuple:
    """main(args): (exit status, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    vod = SyntheticVod(45, seed=2, moments=[(12.0, 16.0)], music=[], bangs=[])
    return write_media(folder / "vod.mp4", vod.blocks(), video=True, fps=10, gop=20)


@pytest.fixture(scope="module")
def other_media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("other")
    vod = SyntheticVod(40, seed=9, moments=[(20.0, 24.0)], music=[], bangs=[])
    return write_media(folder / "secret.mp4", vod.blocks(), video=True, fps=10, gop=20)


@pytest.fixture(scope="module")
def finished(media, tmp_path_factory):
    """A folder of a finished detect run."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main(["detect", str(media), "--out", str(out), *SETTINGS]) == 0
    return out


@pytest.fixture(scope="module")
def interrupted(media, tmp_path_factory):
    """A folder holding the record of a run stopped (Ctrl-C) once its windows were scored
    (phase 3): the record this tool writes, to tamper with."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    with pytest.MonkeyPatch.context() as patch:
        def stop(*args, **kwargs):
            raise KeyboardInterrupt

        patch.setattr(detect_module, "finish", stop)
        assert main(["detect", str(media), "--out", str(out), *SETTINGS]) == 130
    data = json.loads((out / RECORD_NAME).read_text())
    assert data["phase"] == 3 and data["windows"]
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(folder, out, symlinks=True)
    return out


class CountingServer:
    """A real HTTP server on 127.0.0.1 that counts the requests it gets."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                self.send_error(404)

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def counting_server():
    server = CountingServer()
    yield server
    server.close()


# -- Finding 8: the progress record and highlights.json are checked, never trusted -------------

@pytest.mark.parametrize("foreign", ["other file", "url"])
def test_finding8_progress_record_with_phase3_and_foreign_source_is_refused(
        media, other_media, interrupted, counting_server, tmp_path, capsys, foreign):
    out = copy_of(interrupted, tmp_path)
    record = out / RECORD_NAME
    data = json.loads(record.read_text())
    data["info"]["source"] = (str(other_media) if foreign == "other file"
                              else f"{counting_server.url}/vod.m3u8")
    data["info"]["timeline"] = [{"stream_sec": 0.0, "origin_sec": 0.0, "discontinuity": 0,
                                 "sequence": 0}]
    record.write_text(json.dumps(data))
    saved = record.read_bytes()

    code, err = run(capsys, "detect", media, "--out", out, *SETTINGS)
    assert code == 1
    assert "info.source" in one_line(err) and "--restart" in err
    assert record.read_bytes() == saved  # refused: nothing of the folder's is touched
    assert not (out / "clips").exists()

    # --restart starts over; the clips are cut from the input this run was given, nothing else.
    code, err = run(capsys, "detect", media, "--out", out, "--restart", *SETTINGS)
    assert code == 0, err
    summary = json.loads((out / "highlights.json").read_text())
    assert summary["source"] == str(Path(media).resolve())
    assert summary["highlights"] and all(r["clip_path"] for r in summary["highlights"])
    assert counting_server.requests == []  # no request to the record's URL
    assert not record.exists()


def test_finding8_a_record_source_is_never_taken_even_when_it_names_the_input(
        media, interrupted, tmp_path, capsys):
    """The record's own phase-3 resume: the outputs name the input given, as the user gave it."""
    out = copy_of(interrupted, tmp_path)
    code, err = run(capsys, "detect", media, "--out", out, *SETTINGS)
    assert code == 0, err
    summary = json.loads((out / "highlights.json").read_text())
    assert summary["source"] == str(Path(media).resolve())


def _tampered(data: dict, how: str):
    if how == "a JSON list":
        return "[1, 2, 3]"
    if how == "no fingerprint":
        del data["fingerprint"]
    elif how == "windows: 'abc'":
        data["windows"] = "abc"
    elif how == "info: {}":
        data["info"] = {}
    elif how == "NaN position":
        return json.dumps(data).replace('"position_sec": ', '"position_sec": NaN, "x": ')
    elif how == "NaN score":
        data["windows"][1][3] = math.nan
        return json.dumps(data, allow_nan=True)
    elif how == "a window row too short":
        data["windows"][0] = [0, 1.0]
        data["windows"][2] = ["two", 1.0, 2.0, 0.5, 1.0]
    elif how == "windows out of order":
        data["windows"][0][0] = 7
    elif how == "phase 9":
        data["phase"] = 9
    elif how == "nested too deep":
        return json.dumps(data)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif how == "not JSON":
        return "{\"format\": 2,"
    elif how == "a stage state of the wrong shape":
        data["stages"] = {"features": {"reference_db": "loud"}}
    return json.dumps(data)


@pytest.mark.parametrize("how", [
    "a JSON list", "no fingerprint", "windows: 'abc'", "info: {}", "NaN position", "NaN score",
    "a window row too short", "windows out of order", "phase 9", "nested too deep", "not JSON"])
def test_finding8_malformed_progress_records_are_refused_in_one_line(
        media, interrupted, tmp_path, capsys, how):
    out = copy_of(interrupted, tmp_path)
    record = out / RECORD_NAME
    record.write_text(_tampered(json.loads(record.read_text()), how))
    saved = record.read_bytes()
    code, err = run(capsys, "detect", media, "--out", out, *SETTINGS)
    assert code == 1
    assert RECORD_NAME in one_line(err) and "--restart" in err
    assert record.read_bytes() == saved


def test_finding8_restart_starts_over_from_a_malformed_record(media, interrupted, tmp_path,
                                                              capsys):
    out = copy_of(interrupted, tmp_path)
    record = out / RECORD_NAME
    record.write_text(_tampered(json.loads(record.read_text()), "windows: 'abc'"))
    code, err = run(capsys, "detect", media, "--out", out, "--restart", *SETTINGS)
    assert code == 0, err
    assert json.loads((out / "highlights.json").read_text())["windows"] > 0
    assert not record.exists()


def test_finding8_a_stage_state_is_checked_before_it_is_restored(media, tmp_path, capsys):
    """A phase-1 record (the features' dB history) whose stage state is not the stage's."""
    from highlightsense.engine.resume import ProgressRecord, fingerprint
    from highlightsense.engine.config import load_config
    from highlightsense.engine.passes import build_scorer
    from dataclasses import replace

    cfg = load_config(None, {"threshold_percentile": 80.0})
    scorer = build_scorer(cfg)
    cfg = replace(cfg, batch_size=cfg.batch_size or scorer.batch_size)
    out = tmp_path / "out"
    out.mkdir()
    record = ProgressRecord(out / RECORD_NAME, fingerprint(str(media), cfg, scorer))
    record.windows = []
    record.stages = {stage.name: {"reference_db": "loud"}
                     for stage in scorer.feature_stages(cfg, detect_module.FeatureRun())}
    record.save()
    code, err = run(capsys, "detect", media, "--out", out, "--threshold-percentile", "80",
                    "--top-n", "2", "-q")
    assert code == 1
    assert "$.stages." in one_line(err) and "--restart" in err


@pytest.mark.parametrize("how, where", [
    ("source a number", "$.source"),
    ("timeline not a list", "$.timeline"),
    ("NaN origin", "$.origin_sec"),
    ("no settings", "settings"),
    ("a JSON list", "$"),
])
def test_finding8_select_refuses_a_malformed_highlights_json_in_one_line(
        finished, tmp_path, capsys, how, where):
    out = copy_of(finished, tmp_path)
    summary_path = out / "highlights.json"
    summary = json.loads(summary_path.read_text())
    if how == "source a number":
        summary["source"] = 12
    elif how == "timeline not a list":
        summary["timeline"] = "abc"
    elif how == "NaN origin":
        summary["origin_sec"] = math.nan
    elif how == "no settings":
        del summary["settings"]
    else:
        summary = [summary]
    summary_path.write_text(json.dumps(summary, allow_nan=True))
    clips_before = sorted(p.name for p in (out / "clips").iterdir())
    code, err = run(capsys, "select", out, "--top-n", "1", "-q")
    assert code == 1
    assert "highlights.json" in one_line(err) and where in err
    assert sorted(p.name for p in (out / "clips").iterdir()) == clips_before


def test_finding8_select_says_which_source_it_cuts_from(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    source = json.loads((out / "highlights.json").read_text())["source"]
    code = main(["select", str(out), "--top-n", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"the clips are cut from {source}" in err


def test_finding8_select_refuses_scores_that_are_not_numbers(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    scores = out / "raw_window_scores.csv"
    lines = scores.read_text().splitlines()
    lines[2] = "1,5.0,35.0,abc,6.0"
    scores.write_text("\n".join(lines) + "\n")
    code, err = run(capsys, "select", out, "-q")
    assert code == 1 and "raw_window_scores.csv" in one_line(err)


# -- Finding 9: no link inside --out is followed on write or delete -----------------------------

def test_finding9_planted_part_symlinks_are_not_followed(media, finished, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    out = tmp_path / "out"
    (out / "clips").mkdir(parents=True)
    clip_names = [Path(r["clip_path"]).name for r in
                  json.loads((finished / "highlights.json").read_text())["highlights"]]
    planted = [out / ".raw_window_scores.csv.part", out / ".highlights.json.part",
               out / ".scores.png.part", out / ".final_clips_metadata.csv.part",
               out / f".{RECORD_NAME}.part"]
    planted += [out / "clips" / f".{name}.part" for name in clip_names]
    for link in planted:
        link.symlink_to(victim)
    code, err = run(capsys, "detect", media, "--out", out, *SETTINGS)
    assert code == 0, err
    assert victim.read_text() == "the user's own file\n"
    for name in ("raw_window_scores.csv", "highlights.json", "scores.png"):
        assert (out / name).is_file() and not (out / name).is_symlink()
    for name in clip_names:
        assert (out / "clips" / name).is_file() and not (out / "clips" / name).is_symlink()
    assert not any(p.is_symlink() for p in out.rglob("*"))  # the planted names are gone


def test_finding9_clips_folder_that_is_a_link_is_refused_and_its_target_untouched(
        finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "highlight_01.mp4").write_bytes(b"the user's video")  # named as clips are
    shutil.rmtree(out / "clips")
    (out / "clips").symlink_to(elsewhere, target_is_directory=True)

    code, err = run(capsys, "select", out, "--top-n", "1", "-q")
    assert code == 1
    assert "clips" in one_line(err) and "symbolic link" in err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["highlight_01.mp4"]

    # Without clips, the stale-clip cleanup leaves the link's target alone too.
    code, err = run(capsys, "select", out, "--no-clips", "-q")
    assert code == 0, err
    assert (elsewhere / "highlight_01.mp4").read_bytes() == b"the user's video"
    assert (out / "clips").is_symlink()


def test_finding9_out_itself_may_be_a_link_the_user_chose(media, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "link"
    out.symlink_to(real, target_is_directory=True)
    code, err = run(capsys, "detect", media, "--out", out, *SETTINGS)
    assert code == 0, err
    assert (real / "highlights.json").is_file() and any((real / "clips").iterdir())


# -- Finding 13: a model file cannot choose what is built while it is read ----------------------

def _tiny_separator():
    import torch
    from fractions import Fraction

    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    return HTDemucs(["drums", "bass", "other", "vocals"], segment=Fraction(1), channels=4,
                    depth=4, nfft=4096, t_layers=1, t_heads=1, dconv_comp=2).eval()


def _package(model, **kwargs):
    args, saved = model._init_args_kwargs
    return {"klass": type(model), "args": list(args), "kwargs": {**saved, **kwargs},
            "state": model.state_dict()}


def _refusal(path) -> str:
    from highlightsense.engine.errors import HighlightSenseError
    from highlightsense.model.separator import load_separator

    with pytest.raises(HighlightSenseError) as err:
        load_separator(path)
    message = str(err.value)
    assert "\n" not in message and "HTDemucs(" not in message, message  # no module repr
    return message


def test_finding13_th_that_builds_a_model_while_unpickled_is_refused_in_one_line(
        tmp_path, monkeypatch):
    import torch
    from demucs.htdemucs import HTDemucs

    class BuildsOnLoad:
        """Pickles as a call HTDemucs(sources, audio_channels, channels=4096): gigabytes."""

        def __reduce__(self):
            return (HTDemucs, (["drums", "bass", "other", "vocals"], 2, 4096))

    model = _tiny_separator()
    path = tmp_path / "builds.th"
    torch.save(dict(_package(model), klass=BuildsOnLoad()), path)

    built = []
    monkeypatch.setattr(HTDemucs, "__init__", lambda self, *a, **k: built.append(a))
    message = _refusal(path)
    assert built == []  # the real class was never called
    assert "refusing" in message and "builds a HTDemucs while it is read" in message


@pytest.mark.parametrize("kwargs, why", [
    ({"channels": 4096}, "weights, and the file holds"),
    ({"depth": 1_000_000}, "depth is 1000000, over 64"),
    ({"sources": ["x" * 10_000]}, "text of 10000 characters"),
    ({"t_cape_glob_loc_scale": list(range(1000))}, "holds 1000 items"),
    ({"growth": float("inf")}, "growth is inf"),
])
def test_finding13_th_package_arguments_are_checked_before_the_model_is_built(
        tmp_path, kwargs, why):
    import torch

    path = tmp_path / "big.th"
    torch.save(_package(_tiny_separator(), **kwargs), path)
    message = _refusal(path)
    assert "refusing" in message and why in message


def test_finding13_safetensors_metadata_arguments_get_the_same_check(tmp_path):
    from safetensors.torch import load_file, save_file

    from highlightsense.model.separator import load_separator, save_safetensors

    good = save_safetensors(_tiny_separator(), tmp_path / "good.safetensors")
    assert load_separator(good) is not None  # the export this tool writes still loads
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        metadata = f.metadata()
    kwargs = json.loads(metadata["kwargs"])
    for name, change, why in [("big", {"channels": 4096}, "weights, and the file holds"),
                              ("deep", {"depth": 10**9}, "over 64"),
                              ("odd", {"nfft": {"_type": "fraction"}}, "demucs's JSON")]:
        path = tmp_path / f"{name}.safetensors"
        save_file(load_file(str(good)), str(path),
                  metadata=dict(metadata, kwargs=json.dumps({**kwargs, **change})))
        message = _refusal(path)
        assert why in message, message


# -- Finding 10 (settings): nan and inf are refused by name, in one line ------------------------

@pytest.mark.parametrize("yaml_text, named", [
    ("window_sec: .nan\n", "'window_sec'"),
    ("window_sec: .inf\n", "'window_sec'"),
    ("stride_sec: -.inf\n", "'stride_sec'"),
    ("nms_window: .nan\n", "'nms_window'"),
    ("threshold: .nan\n", "'threshold'"),
    ("max_duration_sec: .inf\n", "'max_duration_sec'"),
    ("progress_every_sec: .nan\n", "'progress_every_sec'"),
])
def test_finding10_yaml_nan_and_inf_settings_are_refused_in_one_line(
        media, tmp_path, capsys, yaml_text, named):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    code, err = run(capsys, "detect", media, "--out", tmp_path / "out", "--config", config)
    assert code == 1 and named in one_line(err) and "finite number" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, named", [
    (["detect", "IN", "--out", "OUT", "--window-sec", "nan"], "--window-sec"),
    (["detect", "IN", "--out", "OUT", "--max-duration", "nan"], "--max-duration"),
    (["detect", "IN", "--out", "OUT", "--stride-sec", "inf"], "--stride-sec"),
    (["detect", "IN", "--out", "OUT", "--nms-window=-inf"], "--nms-window"),
    (["select", "OUT", "--threshold", "nan"], "--threshold"),
    (["watch", "http://127.0.0.1:9/live.m3u8", "--horizon", "nan"], "--horizon"),
    (["watch", "http://127.0.0.1:9/live.m3u8", "--max-delay", "inf"], "--max-delay"),
])
def test_finding10_nan_and_inf_flags_are_refused_in_one_line(media, tmp_path, capsys, args,
                                                              named):
    args = [{"IN": str(media), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    code, err = run(capsys, *args)
    assert code == 1 and named in one_line(err) and "finite number" in err
    assert not (tmp_path / "out").exists()


# -- Finding 12: the webhook's secrets stay out of the log; its queue is bounded ---------------

class Hook:
    """A webhook receiver on 127.0.0.1: answers `status`, each POST held until `release`."""

    def __init__(self, status=200):
        self.bodies, self.auth, self.status = [], [], status
        self.release = threading.Event()
        self.release.set()
        self.arrived = threading.Event()  # a POST has come (and may be held)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.arrived.set()
                outer.release.wait(30)
                outer.bodies.append(json.loads(body))
                outer.auth.append(self.headers.get("Authorization"))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _clip_event(k: int):
    from highlightsense.operators.sinks.events import ClipEvent

    return ClipEvent(id=k, path=f"clip{k}.mp4", start_sec=k, end_sec=k + 1.0, mode="copy",
                     note="")


def test_finding12_webhook_url_secrets_are_redacted_in_warnings(tmp_path, caplog):
    from highlightsense.operators.sinks.events import EventSink

    hook = Hook(status=403)  # refused: a warning, with the URL in it
    url = f"http://alice:hunter2@127.0.0.1:{hook.port}/hook?token=SECRET123&x=1"
    try:
        with caplog.at_level("WARNING", logger="highlightsense"):
            sink = EventSink(str(tmp_path / "events.jsonl"), webhook=url, tries=1)
            sink.emit(_clip_event(1))
            sink.close()
    finally:
        hook.close()
    assert sink.failed == 1 and len(hook.bodies) == 1
    assert f"webhook http://***@127.0.0.1:{hook.port}/hook?***" in caplog.text
    assert "SECRET123" not in caplog.text and "hunter2" not in caplog.text
    assert hook.auth == ["Basic YWxpY2U6aHVudGVyMg=="]  # the credentials went as Basic auth


def test_finding12_webhook_queue_is_bounded_and_drops_the_oldest_with_a_count(tmp_path,
                                                                            caplog):
    from highlightsense.operators.sinks.events import EventSink

    hook = Hook()
    hook.release.clear()  # a receiver that does not answer yet
    try:
        with caplog.at_level("WARNING", logger="highlightsense"):
            sink = EventSink(str(tmp_path / "events.jsonl"),
                             webhook=f"http://127.0.0.1:{hook.port}/hook?token=S", queue_max=5)
            sink.emit(_clip_event(1))
            assert hook.arrived.wait(10)  # the first is in flight, held by the receiver
            for k in range(2, 51):
                sink.emit(_clip_event(k))
                assert sink._posts.qsize() <= 5
            hook.release.set()
            sink.close()
    finally:
        hook.close()
    ids = [b["id"] for b in hook.bodies]
    # The one in flight when the receiver stalled, then the newest five, in order.
    assert ids == [1, 46, 47, 48, 49, 50]
    assert sink.dropped == 44
    assert f"{sink.dropped} events dropped" in caplog.text and "token=S" not in caplog.text
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 50  # the file has all
