"""Loading separator models: local .th, .safetensors and repo folders written here with the real
demucs classes, a demucs name from the HuggingFace cache, refused pickles and classes, the
offline error, and the device choice."""
import json
import os
import socket
from pathlib import Path
from fractions import Fraction

import pytest
import torch
from safetensors.torch import save_file

from demucs.apply import BagOfModels
from demucs.hf import load_safetensors_model
from demucs.htdemucs import HTDemucs
from demucs.states import load_model

from highlightsense.engine.errors import HighlightSenseError
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

    # As a user's HF_HUB_OFFLINE=1: huggingface_hub would otherwise retry for ~20 s.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HighlightSenseError) as err:
        load_separator("htdemucs")
    message = str(err.value)
    assert "\n" not in message
    assert "'htdemucs'" in message and "network" in message and "--separator" in message
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
