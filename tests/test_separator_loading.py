"""Loading separator models: local .th, .safetensors and repo folders written here with the real
demucs classes, a demucs name from the HuggingFace cache, refused pickles and classes, the
offline error, downloads from local servers (the failures fast and in one line, progress on
stderr), and the device choice."""
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from fractions import Fraction

import pytest
import torch
from safetensors.torch import save_file

from demucs.apply import BagOfModels
from demucs.hf import load_safetensors_model
from demucs.htdemucs import HTDemucs
from demucs.states import load_model

from highlightsense.benchmarks import bench_support
from highlightsense.engine.errors import HighlightSenseError
from highlightsense.model import separator
from highlightsense.model.separator import (check_half, load_separator, pick_device,
                                            save_package, save_safetensors)

SOURCES = ["drums", "bass", "other", "vocals"]


def tiny(seed=0, segment=Fraction(1)):
    torch.manual_seed(seed)
    return HTDemucs(SOURCES, segment=segment, channels=4, depth=4, nfft=4096, t_layers=1,
                    t_heads=1, dconv_comp=2).eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def write_th(model, path):
    """A .th package as demucs's serialize_model writes it (its training args left out)."""
    args, kwargs = model._init_args_kwargs
    torch.save({"klass": type(model), "args": args, "kwargs": kwargs,
                "state": model.state_dict()}, path)
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once, as on a machine without network."""
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    from huggingface_hub import constants

    hf = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return hf


def test_local_th_package(tmp_path):
    model = tiny()
    path = write_th(model, tmp_path / "mine.th")
    loaded = load_separator(str(path))
    assert isinstance(loaded, HTDemucs) and not loaded.training
    assert loaded.segment == Fraction(1) and loaded.sources == SOURCES
    assert same_weights(model, loaded)
    x = torch.randn(1, 2, 44100)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_save_package_is_what_demucs_reads(tmp_path):
    model = tiny(1)
    path = save_package(model, tmp_path / "pkg.th")
    theirs = load_model(str(path))  # demucs's own loader, as its CLI uses it
    assert same_weights(model, theirs)
    assert same_weights(model, load_separator(path))


def test_th_checksum_in_name_is_checked(tmp_path):
    path = write_th(tiny(), tmp_path / "abc-00000000.th")
    assert isinstance(load_separator(write_th(tiny(), tmp_path / "my-model.th")), HTDemucs)
    with pytest.raises(HighlightSenseError, match="damaged"):
        load_separator(path)


def test_exported_safetensors(tmp_path):
    model = tiny(2)
    path = save_safetensors(model, tmp_path / "model.safetensors")
    loaded = load_separator(path)
    assert isinstance(loaded, HTDemucs) and loaded.segment == Fraction(1)
    assert same_weights(model, loaded)
    assert same_weights(model, load_safetensors_model(path))  # demucs reads our export too


def test_safetensors_written_as_demucs_exports_it(tmp_path):
    model = tiny(3)
    args, kwargs = model._init_args_kwargs
    metadata = {"klass": "demucs.htdemucs.HTDemucs", "args": json.dumps(list(args)),
                "kwargs": json.dumps({**kwargs, "segment": {"_type": "fraction",
                                                            "numerator": 1, "denominator": 1}})}
    save_file(model.state_dict(), str(tmp_path / "x.safetensors"), metadata=metadata)
    assert same_weights(model, load_separator(tmp_path / "x.safetensors"))


def test_repo_folder_with_a_bag(tmp_path):
    a, b = tiny(4), tiny(5, segment=Fraction(3, 2))
    write_th(a, tmp_path / "aaaa1111.th")
    save_safetensors(b, tmp_path / "bbbb2222.safetensors")
    (tmp_path / "mybag.yaml").write_text(
        "models: ['aaaa1111', 'bbbb2222']\nweights: [[1., 0., 1., 1.], [0., 1., 1., 0.]]\n")
    bag = load_separator(tmp_path)
    assert isinstance(bag, BagOfModels) and len(bag.models) == 2
    assert bag.weights == [[1., 0., 1., 1.], [0., 1., 1., 0.]]
    assert same_weights(a, bag.models[0]) and same_weights(b, bag.models[1])
    assert load_separator(tmp_path / "mybag.yaml").weights == bag.weights


def test_repo_folder_with_one_model_and_errors(tmp_path):
    write_th(tiny(), tmp_path / "only.th")
    assert isinstance(load_separator(tmp_path), HTDemucs)
    write_th(tiny(), tmp_path / "other.th")
    with pytest.raises(HighlightSenseError, match="several models"):
        load_separator(tmp_path)
    (tmp_path / "bag.yaml").write_text("models: ['only', 'missing']\n")
    with pytest.raises(HighlightSenseError, match="missing"):
        load_separator(tmp_path)


def test_pickle_with_other_globals_is_refused_by_name(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    model = tiny()
    args, kwargs = model._init_args_kwargs
    path = tmp_path / "evil.th"
    torch.save({"klass": HTDemucs, "args": args, "kwargs": kwargs,
                "state": model.state_dict(), "extra": Payload()}, path)
    with pytest.raises(HighlightSenseError) as err:
        load_separator(path)
    message = str(err.value)
    assert "refusing" in message and f"{os.system.__module__}.system" in message
    assert "\n" not in message
    assert not marker.exists()


def test_package_naming_a_non_model_class_is_refused(tmp_path):
    path = tmp_path / "odd.th"
    torch.save({"klass": Fraction, "args": [1], "kwargs": {}, "state": {}}, path)
    with pytest.raises(HighlightSenseError, match="refusing"):
        load_separator(path)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "odd.safetensors"),
              metadata={"klass": "os.system", "args": '["true"]', "kwargs": "{}"})
    with pytest.raises(HighlightSenseError, match="refusing.*os.system"):
        load_separator(tmp_path / "odd.safetensors")


def test_not_a_model_file(tmp_path):
    (tmp_path / "junk.th").write_bytes(b"not a torch file")
    with pytest.raises(HighlightSenseError, match="cannot read"):
        load_separator(tmp_path / "junk.th")
    with pytest.raises(HighlightSenseError, match="not found"):
        load_separator(str(tmp_path / "absent.th"))


def test_name_loads_from_the_huggingface_cache_offline(empty_caches, no_network):
    """A demucs name resolves through the HuggingFace cache as demucs lays it out, without
    any network (sockets refuse), and its safetensors go through the safe loader."""
    model = tiny(6)
    snapshot = empty_caches / "models--adefossez--HTDemucs" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (empty_caches / "models--adefossez--HTDemucs" / "refs").mkdir()
    (empty_caches / "models--adefossez--HTDemucs" / "refs" / "main").write_text("0123abcd")
    (snapshot / "htdemucs.yaml").write_text("models: ['955717e8']\n")
    save_safetensors(model, snapshot / "955717e8.safetensors")
    bag = load_separator("htdemucs")
    assert isinstance(bag, BagOfModels) and same_weights(model, bag.models[0])


def test_offline_error_is_one_line(empty_caches, no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as a user's HF_HUB_OFFLINE=1
    with pytest.raises(HighlightSenseError) as err:
        load_separator("htdemucs")
    message = str(err.value)
    assert "\n" not in message
    assert "cannot download the separator 'htdemucs'" in message and "--separator" in message
    assert "HF_HUB_OFFLINE is set" in message and "network is unreachable" in message
    assert str(empty_caches) in message
    assert not any((empty_caches.parent / "torch").rglob("*.th"))


def test_unknown_name(empty_caches, no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HighlightSenseError, match="htdemucs_ft") as err:
        load_separator("no_such_model")
    assert "\n" not in str(err.value)


def test_device_choice():
    auto = pick_device(None)
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    elif not torch.backends.mps.is_available():
        assert auto == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(HighlightSenseError, match="unknown device"):
        pick_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(HighlightSenseError, match="CUDA"):
            pick_device("cuda")
        with pytest.raises(HighlightSenseError, match="--half"):
            check_half(torch.device("cpu"), True)
    check_half(torch.device("cpu"), False)


def test_a_model_in_torch_hubs_cache_loads_without_the_network(empty_caches, no_network,
                                                               monkeypatch, capfd):
    """demucs's legacy repo: a signature already in torch hub's checkpoints folder (where an
    earlier download put it) is read from there, with the allowlist, and nothing is printed."""
    from demucs.pretrained import REMOTE_ROOT, _parse_remote_files
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    url = _parse_remote_files(REMOTE_ROOT / "files.txt")["955717e8"]  # htdemucs's one model
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert str(checkpoints).startswith(str(empty_caches.parent))  # the test's own TORCH_HOME
    checkpoints.mkdir(parents=True)
    model = tiny()
    write_th(model, checkpoints / Path(url).name)
    capfd.readouterr()
    bag = load_separator("htdemucs")
    assert isinstance(bag, BagOfModels) and same_weights(model, bag.models[0])
    assert capfd.readouterr() == ("", "")


# ---- downloads: from servers on 127.0.0.1, as a first run on a machine meets them -------------

class Server(http.server.ThreadingHTTPServer):
    """A server on 127.0.0.1 that notes each request line and answers it with
    `answer(method, path) -> (status, headers, body)`; also a proxy that answers CONNECT."""

    def __init__(self, answer):
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self):
                requests.append(f"{self.command} {self.path}")
                status, headers, body = answer(self.command, self.path)
                self.send_response(status)
                if not callable(body):
                    headers = {**headers, "Content-Length": str(len(body))}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if callable(body):
                    body(self.wfile)
                else:
                    self.wfile.write(body)

            do_GET = do_HEAD = do_CONNECT = reply

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def serve():
    servers = []

    def start(answer):
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def first_run_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("first-run")
    return (bench_support.generate_input(folder / "vod.m4a", 0.1),
            bench_support.write_random_crnn(folder / "best_model.pt", "small"))


def first_run_env(tmp_path, **extra) -> dict:
    """A first run's environment: empty model caches; no proxy or HuggingFace settings but
    the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")
           and not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    env.update(TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"), **extra)
    return env


def detect_with_default_separator(files, tmp_path, env):
    media, checkpoint = files
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "highlightsense.engine.cli", "detect",
                           str(media), "--model", str(checkpoint), "--device", "cpu",
                           "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - began


# The child's own start (torch and demucs imports) takes 3-5 s on CI's 2 cores; before the
# bound, huggingface_hub's retries alone took 23 s.
FAIL_FAST_SEC = 12


def assert_one_line_pointing_at_separator(proc, wall: float) -> str:
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # stdout carries results only
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # no retry warnings, no traceback
    assert lines[0].startswith("error: cannot download the separator 'htdemucs' (")
    assert "point --separator at a local model file" in lines[0]
    assert wall < FAIL_FAST_SEC, (wall, lines[0])
    return lines[0]


def test_offline_first_run_fails_fast_in_one_line(first_run_files, tmp_path):
    """Every proxy variable points at a closed port of 127.0.0.1, so both download locations
    (huggingface_hub through httpx, the legacy one through urllib) are refused at once, as on
    a machine without network."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = first_run_env(tmp_path, HTTPS_PROXY=proxy, HTTP_PROXY=proxy, ALL_PROXY=proxy)
        proc, wall = detect_with_default_separator(first_run_files, tmp_path, env)
    line = assert_one_line_pointing_at_separator(proc, wall)
    assert "huggingface.co: Connection refused" in line
    assert "dl.fbaipublicfiles.com: Connection refused" in line
    assert str(tmp_path / "hf") in line and str(tmp_path / "torch") in line
    assert not (tmp_path / "out" / "highlights.json").exists()


def test_http_errors_fail_fast_without_retries(first_run_files, tmp_path, serve):
    """A HuggingFace mirror (HF_ENDPOINT) that answers 503, which huggingface_hub would retry
    for 23 s, and a proxy that refuses the tunnel to the legacy location: each is asked once."""
    server = serve(lambda method, path: (503, {}, b"busy") if method == "HEAD" else
                   (403, {}, b""))
    env = first_run_env(tmp_path, HF_ENDPOINT=server.url, HTTPS_PROXY=server.url)
    proc, wall = detect_with_default_separator(first_run_files, tmp_path, env)
    line = assert_one_line_pointing_at_separator(proc, wall)
    assert f"{server.url[len('http://'):]}: HTTP 503" in line
    assert "dl.fbaipublicfiles.com: Tunnel connection failed: 403 Forbidden" in line
    asked = [r for r in server.requests if "htdemucs" in r or "fbaipublicfiles" in r]
    assert asked == ["HEAD /adefossez/HTDemucs/resolve/main/htdemucs.yaml",
                     "CONNECT dl.fbaipublicfiles.com:443"]


def hub_answer(files):
    """A HuggingFace-compatible endpoint serving `files` ({name: bytes}) in adefossez/HTDemucs."""
    def answer(method, path):
        name = path.rsplit("/", 1)[-1]
        if not path.startswith("/adefossez/HTDemucs/resolve/main/") or name not in files:
            return 404, {}, b""
        body = files[name]
        return 200, {"X-Repo-Commit": "0123456789abcdef0123456789abcdef01234567",
                     "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}, body
    return answer


def run_on_a_terminal(command, env) -> tuple:
    """(exit status, stdout, stderr) of `command` with its stderr on a pseudo-terminal, where
    progress bars show (tqdm hides huggingface_hub's when stderr is not a terminal)."""
    import fcntl
    import pty
    import struct
    import termios

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # else 0 wide
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, env=env)
    os.close(terminal)
    err = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            err.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(err).decode(errors="replace")


def test_download_from_the_hub_shows_progress_on_stderr_only(tmp_path, serve):
    """A real first download (HF_ENDPOINT at a local endpoint): the model is fetched into the
    cache and loads; its progress goes to stderr, nothing to stdout but the child's result."""
    model = tiny(7)
    weights = save_safetensors(model, tmp_path / "955717e8.safetensors").read_bytes()
    server = serve(hub_answer({"htdemucs.yaml": b"models: ['955717e8']\n",
                               "955717e8.safetensors": weights}))
    check = ("from highlightsense.model.separator import load_separator\n"
             "bag = load_separator('htdemucs')\n"
             "print(type(bag).__name__, sum(p.numel() for p in bag.parameters()))\n")
    code, out, err = run_on_a_terminal([sys.executable, "-c", check],
                                       first_run_env(tmp_path, HF_ENDPOINT=server.url))
    assert code == 0, err
    assert out == f"BagOfModels {sum(p.numel() for p in model.parameters())}\n"
    assert "955717e8.safetensors" in err and "100%" in err  # the progress bar
    assert "GET /adefossez/HTDemucs/resolve/main/955717e8.safetensors" in server.requests
    assert list((tmp_path / "hf").rglob("955717e8.safetensors"))


@pytest.fixture
def legacy(empty_caches, tmp_path, monkeypatch):
    """demucs's legacy location as the only one (HuggingFace offline), its file list in a folder
    of the test's: publish(server, file names, bags) puts them at the server's /x/."""
    import demucs.pretrained
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setattr(separator, "REMOTE_ROOT", remote)

    def publish(server, names, bags=()):
        (remote / "files.txt").write_text("root: x/\n" + "".join(f"{n}\n" for n in names))
        for bag, signatures in dict(bags).items():
            (remote / f"{bag}.yaml").write_text(f"models: {signatures!r}\n")
        monkeypatch.setattr(demucs.pretrained, "ROOT_URL", server.url + "/")

    return publish


def test_legacy_download_checks_the_hash_and_shows_progress_on_stderr(legacy, tmp_path, serve,
                                                                      capfd):
    """The file goes to torch hub's cache through a partial file, its sha256 checked against
    the prefix in its name, the progress on stderr; a damaged one is refused, nothing cached."""
    model = tiny(8)
    good = write_th(model, tmp_path / "good.th").read_bytes()
    good_name = f"abcd1234-{hashlib.sha256(good).hexdigest()[:8]}.th"
    bad_name = "ef567890-00000000.th"
    served = {f"/x/{good_name}": good, f"/x/{bad_name}": good}
    server = serve(lambda method, path: (200, {}, served[path]) if path in served else
                   (404, {}, b""))
    legacy(server, [good_name, bad_name], {"mybag": ["abcd1234"]})

    capfd.readouterr()
    bag = load_separator("mybag")
    assert isinstance(bag, BagOfModels) and same_weights(model, bag.models[0])
    out, err = capfd.readouterr()
    assert out == "" and good_name in err and "100%" in err
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [good_name]

    with pytest.raises(HighlightSenseError, match="damaged.*its name says 00000000"):
        load_separator("ef567890")
    assert sorted(p.name for p in checkpoints.iterdir()) == [good_name]  # no partial file


def test_a_stalled_or_cut_download_gives_up_in_one_line(legacy, serve, monkeypatch):
    """A server that stops sending mid-file: the download ends after the read timeout; one that
    closes the connection early: the download is refused as short. Both in one line naming the
    host and the bytes received, and neither leaves anything in the cache."""
    monkeypatch.setattr(separator, "READ_TIMEOUT_SEC", 0.5)
    release = threading.Event()

    def stall(wfile):
        wfile.write(b"x" * 100)
        wfile.flush()
        release.wait(10)

    def cut(wfile):
        wfile.write(b"x" * 100)

    bodies = {"/x/abcd1234-0.th": stall, "/x/ef567890-0.th": cut}
    server = serve(lambda method, path: (200, {"Content-Length": "100000"}, bodies[path]))
    legacy(server, ["abcd1234-0.th", "ef567890-0.th"])
    host = server.url[len("http://"):]
    began = time.monotonic()
    try:
        with pytest.raises(HighlightSenseError) as stalled:
            load_separator("abcd1234")
    finally:
        release.set()
    assert time.monotonic() - began < 5
    with pytest.raises(HighlightSenseError) as short:
        load_separator("ef567890")
    for err in (stalled, short):
        assert "\n" not in str(err.value) and "--separator" in str(err.value)
    assert f"{host}: the transfer stopped after 100 bytes (no answer within 0.5 s)" in str(
        stalled.value)
    assert f"{host}: the transfer stopped after 100 of 100000 bytes" in str(short.value)
    assert not any((Path(torch.hub.get_dir()) / "checkpoints").iterdir())
