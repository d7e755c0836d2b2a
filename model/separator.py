"""Demucs models for the separate operator, and the device to run them on.

A model is named the way demucs names it (`htdemucs`, a bag such as `htdemucs_ft`, a signature,
`namespace/name` on the HuggingFace hub) and found where demucs 4.1 finds it: its HuggingFace
cache, then its legacy torch hub cache, and only when neither has it, downloaded where demucs
downloads it (HuggingFace first; each location asked once, with bounded waits, so a machine
without network is told so in seconds, on one line). Or it is a local file or folder: a demucs
`.th` package, an exported `.safetensors`, a bag `.yaml` beside its models, or a demucs repo
folder holding one bag or one model.

demucs unpickles `.th` files with weights_only=False, which runs whatever code a file carries,
and its safetensors loader imports whatever class the file names. So demucs's lookup is followed
here but its loaders are not: `.th` files are read with weights_only=True and only the demucs
model classes and Fraction allowed, and a `.safetensors` must name one of those classes;
anything else is refused by name.
"""
import hashlib
import inspect
import json
import math
import os
import pickle
import re
import sys
import urllib.parse
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import yaml
from torch import nn

from demucs.apply import BagOfModels
from demucs.demucs import Demucs
from demucs.hdemucs import HDemucs
from demucs.hf import DEFAULT_NAMESPACE, _decode_json, hf_repo_name
from demucs.htdemucs import HTDemucs
from demucs.pretrained import REMOTE_ROOT, _parse_remote_files
from demucs.states import load_model

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.operators.sources.fetch import FetchPolicy, describe_error, is_timeout, open_url

DEFAULT_MODEL = "htdemucs"
MODEL_CLASSES = {f"{k.__module__}.{k.__name__}": k for k in (HTDemucs, HDemucs, Demucs)}


class _StandIn:
    """What a pickle gets for a model class: a demucs package names its class, and one that
    calls it while it is read (to build a model of its own sizes before anything is checked)
    gets an instance of this, which only records the arguments (see _build)."""

    real: type = None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stand_in(klass: type) -> type:
    # Named as the class it stands for: torch's allowlist matches a global by module and name.
    return type(klass.__name__, (_StandIn,), {"__module__": klass.__module__,
                                              "__qualname__": klass.__qualname__, "real": klass})


STAND_INS = {name: _stand_in(klass) for name, klass in MODEL_CLASSES.items()}
SAFE_GLOBALS = [*STAND_INS.values(), Fraction]
# What a model's init arguments may be: plain values of modest size (HTDemucs's are numbers,
# names, a few short lists and a Fraction). Counts that set how many layers are built are held
# lower, and the model is first built on the meta device (no memory) to check that it holds no
# more weights than the file does (_check_sizes).
_MAX_INT = 1 << 20
_MAX_LAYERS = 64
_MAX_ITEMS = 64
_MAX_TEXT = 256
_SUFFIXES = (".th", ".safetensors", ".yaml")


def load_separator(spec: Union[str, os.PathLike] = DEFAULT_MODEL) -> nn.Module:
    """A demucs model (or BagOfModels) in eval mode on the CPU, from a name or a local path."""
    path = Path(os.path.expanduser(str(spec)))
    if path.exists():
        model = _load_path(path)
    elif path.suffix in _SUFFIXES or str(spec).startswith((".", "/", "~")):
        raise HighlightSenseError(f"separator model not found: no file or folder {spec}")
    else:
        model = _load_named(str(spec))
    return model.eval()


def pick_device(name: Optional[str] = None) -> torch.device:
    """The device to separate on: by name, or the first of cuda, mps, cpu that is here."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HighlightSenseError(
            f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise HighlightSenseError(
                f"--device {name}: this machine has {count} CUDA GPU(s) usable by torch "
                f"{torch.__version__}; use --device cpu or auto")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise HighlightSenseError(f"--device {name}: MPS is not available here; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise HighlightSenseError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def check_half(device: torch.device, half: bool) -> None:
    if half and device.type != "cuda":
        raise HighlightSenseError(
            f"--half runs on CUDA only, and the separator device is {device}; drop --half")


# ---- writing models: the formats the loaders read --------------------------------------------

def _init_args(model: nn.Module):
    args, kwargs = model._init_args_kwargs  # recorded by demucs's capture_init
    return list(args), dict(kwargs)


def save_package(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write `model` as a demucs `.th` package (what demucs's own loaders and CLI read)."""
    args, kwargs = _init_args(model)
    package = {"klass": type(model), "args": args, "kwargs": kwargs,
               "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    torch.save(package, path)
    return Path(path)


def _encode_json(value):
    """Inverse of demucs.hf._decode_json: fractions (HTDemucs's segment) become tagged dicts."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator,
                "denominator": value.denominator}
    if isinstance(value, dict):
        return {k: _encode_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_json(v) for v in value]
    return value


def save_safetensors(model: nn.Module, path: Union[str, os.PathLike]) -> Path:
    """Write `model` as demucs's HuggingFace export does: tensors, class and init args as text."""
    from safetensors.torch import save_file

    args, kwargs = _init_args(model)
    klass = type(model)
    metadata = {"klass": f"{klass.__module__}.{klass.__name__}",
                "args": json.dumps(_encode_json(args)), "kwargs": json.dumps(_encode_json(kwargs))}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return Path(path)


# ---- local files and folders -----------------------------------------------------------------

def _load_path(path: Path) -> nn.Module:
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".th":
        return _load_th(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix == ".yaml":
        return _load_bag(path, _models_in(path.parent))
    raise HighlightSenseError(
        f"{path}: give a demucs .th package, a .safetensors export, a bag .yaml "
        "or a demucs repo folder")


def _models_in(folder: Path) -> Dict[str, Path]:
    """Model files of a demucs repo folder by signature (`SIG.th`, `SIG-CHECKSUM.th`,
    `SIG.safetensors`)."""
    models = {}
    for file in sorted(folder.iterdir()):
        if file.suffix in (".th", ".safetensors"):
            sig = file.stem.rsplit("-", 1)[0] if file.suffix == ".th" else file.stem
            if sig in models:
                raise HighlightSenseError(
                    f"{folder} holds two files for model {sig}: {models[sig].name} and "
                    f"{file.name}; keep one")
            models[sig] = file
    return models


def _load_folder(folder: Path) -> nn.Module:
    models = _models_in(folder)
    bags = sorted(folder.glob("*.yaml"))
    if len(bags) == 1:
        return _load_bag(bags[0], models)
    if not bags and len(models) == 1:
        return _load_file(next(iter(models.values())))
    names = [b.name for b in bags] + ([] if bags else [f.name for f in models.values()])
    if not names:
        raise HighlightSenseError(f"{folder} holds no demucs model (.th, .safetensors or .yaml)")
    raise HighlightSenseError(
        f"{folder} holds several models ({', '.join(names)}); give the path of the one to use")


def _load_file(file: Path) -> nn.Module:
    return _load_th(file) if file.suffix == ".th" else _load_safetensors(file)


def _load_bag(yaml_file: Path, models: Dict[str, Path]) -> BagOfModels:
    with open(yaml_file) as f:
        bag = yaml.safe_load(f)
    if not isinstance(bag, dict) or "models" not in bag:
        raise HighlightSenseError(f"{yaml_file} is not a demucs bag of models (no 'models' list)")
    missing = [sig for sig in bag["models"] if sig not in models]
    if missing:
        raise HighlightSenseError(
            f"{yaml_file} names model(s) {', '.join(missing)}, not found in {yaml_file.parent}")
    return BagOfModels([_load_file(models[sig]) for sig in bag["models"]],
                       bag.get("weights"), bag.get("segment"))


def _refused(path, names) -> HighlightSenseError:
    allowed = ", ".join([*MODEL_CLASSES, "fractions.Fraction"])
    return HighlightSenseError(
        f"refusing to load {path}: it holds {', '.join(names)}, which is not a demucs model "
        f"class (allowed: {allowed}); only load model files you trust")


def _unsafe_globals(path, error) -> list:
    """The globals a refused pickle holds, by name (torch lists them; its message names one)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    return names or re.findall(r"GLOBAL ([\w.]+)", str(error))


def _load_th(path: Path) -> nn.Module:
    """A demucs `.th` package, unpickled with only the demucs model classes and Fraction allowed."""
    checksum = path.stem.rsplit("-", 1)[-1]
    if "-" in path.stem and re.fullmatch(r"[0-9a-f]{8,64}", checksum):
        # demucs's repo convention: SIG-CHECKSUM.th, CHECKSUM a prefix of the file's sha256
        actual = hashlib.sha256(path.read_bytes()).hexdigest()[:len(checksum)]
        if actual != checksum:
            raise HighlightSenseError(
                f"{path} is damaged: its sha256 starts {actual}, its name says {checksum}")
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            package = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            names = _unsafe_globals(path, e) if isinstance(e, pickle.UnpicklingError) else []
            if names:
                raise _refused(path, names) from None
            raise HighlightSenseError(f"cannot read {path} as a demucs .th package: "
                                      f"{_one_line(e)}") from None
    return _build(package, path)


def _load_safetensors(path: Path) -> nn.Module:
    """A model exported as demucs's HuggingFace export writes it: tensors plus class and init
    arguments in the metadata. Only plain (not diffq-quantized) states."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise HighlightSenseError(f"cannot read {path} as safetensors: {e}") from None
    if "klass" not in metadata:
        raise HighlightSenseError(f"{path} is not a demucs export: no 'klass' in its metadata")
    if "structure" in metadata:
        raise HighlightSenseError(
            f"{path} is a diffq-quantized model, which needs the diffq package; use an "
            "unquantized model (htdemucs, htdemucs_ft, ...)")
    klass = MODEL_CLASSES.get(metadata["klass"])
    if klass is None:
        raise _refused(path, [metadata["klass"]])
    try:
        args = _decode_json(json.loads(metadata.get("args", "[]")))
        kwargs = _decode_json(json.loads(metadata.get("kwargs", "{}")))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise HighlightSenseError(f"{path} is not a demucs export: its init arguments are not "
                                  f"demucs's JSON ({_one_line(e)})") from None
    return _build({"klass": klass, "args": args, "kwargs": kwargs, "state": state}, path)


def _what(value) -> str:
    """A value named in a few words, never by its repr (a module's runs to pages)."""
    if isinstance(value, _StandIn):
        return f"a {type(value).real.__name__} built while the file is read"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return f"a {type(value).__name__}"


def _argument_problem(value, where: str, depth: int = 0) -> str:
    """What makes `value` (an init argument, at `where`) not a plain one of modest size."""
    if value is None or isinstance(value, (bool, str, float, int, Fraction)):
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            return f"{where} is a text of {len(value)} characters"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where} is {value}"
        if isinstance(value, int) and not isinstance(value, bool):
            limit = _MAX_LAYERS if where.endswith(("depth", "layers")) else _MAX_INT
            if abs(value) > limit:
                return f"{where} is {value}, over {limit}"
        if isinstance(value, Fraction) and max(abs(value.numerator), value.denominator) > _MAX_INT:
            return f"{where} is a fraction of {value.numerator.bit_length()}-bit terms"
        return ""
    if isinstance(value, (list, tuple, dict)) and depth < 3:
        if len(value) > _MAX_ITEMS:
            return f"{where} holds {len(value)} items, over {_MAX_ITEMS}"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                return f"{where} has a key that is {_what(key)}"
            wrong = _argument_problem(item, f"{where}[{key!r}]", depth + 1)
            if wrong:
                return wrong
        return ""
    return f"{where} is {_what(value)}"


def _check_arguments(klass: type, args, kwargs, source) -> None:
    """The package's init arguments, before anything is built from them."""
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise HighlightSenseError(f"{source} is not a demucs model package (its args are not a "
                                  f"list and its kwargs not a mapping)")
    params = [p for p in inspect.signature(klass).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    wrong = (f"it gives {len(args)} positional arguments, {klass.__name__} takes "
             f"{len(params)}") if len(args) > len(params) else ""
    for i, value in enumerate(args):
        wrong = wrong or _argument_problem(value, params[i].name if i < len(params) else "")
    for key, value in kwargs.items():
        wrong = wrong or (f"an argument is named by {_what(key)}" if not isinstance(key, str)
                          else _argument_problem(value, key))
    if wrong:
        raise HighlightSenseError(
            f"refusing to load {source}: its {klass.__name__} arguments are not a model's "
            f"({wrong}); only load model files you trust")


def _check_sizes(klass: type, args, kwargs, state: dict, source) -> None:
    """The model the arguments describe, built on the meta device (no memory, no weights),
    holds no more numbers than the file's weights: a file cannot make us allocate more than
    it carries."""
    kwargs = {k: v for k, v in kwargs.items() if k in inspect.signature(klass).parameters}
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            shape = klass(*args, **kwargs)
    except Exception as e:
        raise HighlightSenseError(f"{source}: cannot build {klass.__name__} from it: "
                                  f"{_one_line(e)}") from None
    wanted = sum(t.numel() for t in shape.state_dict().values())
    held = sum(t.numel() for t in state.values())
    if wanted > held:
        raise HighlightSenseError(
            f"refusing to load {source}: its arguments make a {klass.__name__} of {wanted:,} "
            f"weights, and the file holds {held:,}; only load model files you trust")


def _build(package, source) -> nn.Module:
    if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= set(package):
        raise HighlightSenseError(
            f"{source} is not a demucs model package (a dict with klass, args, kwargs, state)")
    klass = package["klass"]
    if isinstance(klass, _StandIn):
        raise HighlightSenseError(
            f"refusing to load {source}: it builds a {type(klass).real.__name__} while it is "
            f"read, with arguments of its own choosing (a demucs package names its class); "
            f"only load model files you trust")
    if isinstance(klass, type) and issubclass(klass, _StandIn):
        klass = klass.real  # named, as demucs writes packages: now the real class
    if klass not in MODEL_CLASSES.values():
        raise _refused(source, [_what(package["klass"])])
    state = package["state"]
    if isinstance(state, dict) and state.get("__quantized"):
        raise HighlightSenseError(
            f"{source} is a diffq-quantized model, which needs the diffq package; use an "
            "unquantized model (htdemucs, htdemucs_ft, ...)")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise HighlightSenseError(f"{source} is not a demucs model package (its state is not "
                                  f"a mapping of names to tensors)")
    _check_arguments(klass, package["args"], package["kwargs"], source)
    _check_sizes(klass, package["args"], package["kwargs"], state, source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Dropping inexistant parameter": demucs handles it
        try:
            return load_model(dict(package, klass=klass, kwargs=dict(package["kwargs"])))
        except Exception as e:
            raise HighlightSenseError(
                f"{source}: cannot build {klass.__name__} from it: {_one_line(e)}") from None


# ---- by name, from demucs's caches or its download locations ---------------------------------

def _one_line(e: BaseException) -> str:
    """An error's type and first sentence, for a one-line message."""
    text = str(e).strip().split("\n")[0].split(". ")[0][:100].strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# Offline, huggingface_hub retries a failed HEAD five times (1 + 2 + 4 + 8 + 8 s of backoff,
# each attempt logging a warning) and urllib waits on a dropped connection for the system's TCP
# timeout (minutes). Each download location is therefore tried once, waiting this long for a
# host to answer; a transfer under way may pause for up to READ_TIMEOUT_SEC.
CONNECT_TIMEOUT_SEC = 5.0
READ_TIMEOUT_SEC = 60.0


class _Unreachable(Exception):
    """A download location that did not give the file: its host and why, in a few words."""

    def __init__(self, host: str, reason: str):
        super().__init__(f"{host}: {reason}")


def _why(e: BaseException, timeout: float = CONNECT_TIMEOUT_SEC) -> str:
    """Why a request failed: a timeout, or the network error's own words."""
    if is_timeout(e):
        return f"no answer within {timeout:g} s"
    text = re.sub(r"^\[Errno -?\d+\] ", "", describe_error(e))[:100]
    return text or type(e).__name__


def _request(url: str, method: str = "GET", headers: Optional[Dict[str, str]] = None):
    """One request through the project's HTTP transport (operators.sources.fetch: pooled,
    proxies from the environment): waiting CONNECT_TIMEOUT_SEC for the host (or the proxy's
    tunnel), READ_TIMEOUT_SEC on each read; no retries. _Unreachable unless it answers < 400."""
    host = urllib.parse.urlsplit(url).netloc
    policy = FetchPolicy(tries=1, connect_timeout_sec=CONNECT_TIMEOUT_SEC,
                         timeout_sec=READ_TIMEOUT_SEC, stall_sec=READ_TIMEOUT_SEC,
                         headers=headers or {}, allow_private_hosts=True)
    try:
        response = open_url(url, policy, method)
    except Exception as e:
        raise _Unreachable(host, _why(e)) from e
    if response.status >= 400:
        response.close()
        response.release_conn()
        raise _Unreachable(host, f"HTTP {response.status}")
    return response


def _failure(e: BaseException) -> str:
    return str(e) if isinstance(e, _Unreachable) else _one_line(e)


def _from_hf(name: str, local_only: bool) -> BagOfModels:
    """As demucs.hf.get_hf_model: the bag's yaml and one safetensors per model, through the
    HuggingFace cache (downloaded there unless local_only)."""
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    namespace = DEFAULT_NAMESPACE
    if "/" in name:
        namespace, name = name.split("/", 1)
    repo_id = f"{namespace}/{hf_repo_name(name)}"

    def fetch(filename):
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only))

    if not local_only:
        host = urllib.parse.urlsplit(constants.ENDPOINT).netloc
        if constants.HF_HUB_OFFLINE:
            raise _Unreachable(host, "HF_HUB_OFFLINE is set")
        # One HEAD, bounded, no retries: hf_hub_download retries a failed one for ~23 s.
        _request(hf_hub_url(repo_id, f"{name}.yaml"), "HEAD", build_hf_headers()).release_conn()
    bag = yaml.safe_load(fetch(f"{name}.yaml").read_text())
    models = [_load_safetensors(fetch(f"{sig}.safetensors")) for sig in bag["models"]]
    return BagOfModels(models, bag.get("weights"), bag.get("segment"))


def _download(url: str, dest: Path, hash_prefix: Optional[str]) -> None:
    """torch.hub.download_url_to_file with bounded waits (it has none): to a partial file,
    the sha256 prefix of demucs's file name checked, then renamed into place; the progress bar
    on stderr. Proxies as urllib takes them (https_proxy, no_proxy; not ALL_PROXY)."""
    from tqdm import tqdm

    host = urllib.parse.urlsplit(url).netloc
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    sha256 = hashlib.sha256()
    try:
        response = _request(url, headers={"User-Agent": "torch.hub"})
        size = int(response.headers.get("Content-Length") or 0) or None
        with open(partial, "wb") as f, tqdm(
                total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                file=sys.stderr) as bar:
            try:
                while chunk := response.read1(1 << 16):  # what has come, not 64 KiB
                    f.write(chunk)
                    sha256.update(chunk)
                    bar.update(len(chunk))
            except Exception as e:
                if size is not None and not is_timeout(e):  # closed early
                    raise _Unreachable(host, f"the transfer stopped after {bar.n} of {size} "
                                             "bytes") from e
                raise _Unreachable(host, f"the transfer stopped after {bar.n} bytes "
                                         f"({_why(e, READ_TIMEOUT_SEC)})") from e
            finally:
                response.close()
                response.release_conn()
        if size is not None and bar.n != size:  # read1 ends quietly on a closed connection
            raise _Unreachable(host, f"the transfer stopped after {bar.n} of {size} bytes")
        digest = sha256.hexdigest()
        if hash_prefix and not digest.startswith(hash_prefix):
            raise HighlightSenseError(f"the download of {url} is damaged: its sha256 starts "
                                      f"{digest[:len(hash_prefix)]}, its name says {hash_prefix}")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _from_torch_hub(url: str, local_only: bool) -> nn.Module:
    """As demucs.repo.RemoteRepo: torch hub's cache (downloaded there unless local_only, its
    hash checked), but unpickled with the allowlist."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.exists():
        if local_only:
            raise FileNotFoundError(f"{cached} is not cached")
        # Not torch.hub.load_state_dict_from_url: it prints a "Downloading" line to stdout
        # (torch 2.13), which carries results only, and waits without bound.
        cached.parent.mkdir(parents=True, exist_ok=True)
        named = torch.hub.HASH_REGEX.search(cached.name)
        _download(url, cached, named.group(1) if named else None)
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            package = torch.load(cached, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refused(cached, _unsafe_globals(cached, e) or ["a global"]) from None
    return _build(package, cached)


def _from_legacy_remote(name: str, local_only: bool) -> nn.Module:
    """demucs's fallback: the signatures and bags listed in its package's `remote/` folder."""
    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    if name in urls:
        return _from_torch_hub(urls[name], local_only)
    bag_file = REMOTE_ROOT / f"{name}.yaml"
    if not bag_file.exists():
        raise KeyError(name)
    bag = yaml.safe_load(bag_file.read_text())
    models = [_from_torch_hub(urls[sig], local_only) for sig in bag["models"]]
    return BagOfModels(models, bag.get("weights"), bag.get("segment"))


def _load_named(name: str) -> nn.Module:
    """Where demucs 4.1 looks, HuggingFace first, then its legacy repo: both caches before any
    download, so a cached model loads without touching the network."""
    errors = {}
    for local_only in (True, False):
        for where, load in (("HuggingFace", _from_hf), ("legacy", _from_legacy_remote)):
            if where in errors and not local_only and isinstance(errors[where], KeyError):
                continue  # not a legacy name: nothing to download there either
            try:
                return load(name, local_only)
            except HighlightSenseError:
                raise  # a refused or broken file: say so, do not look elsewhere
            except Exception as e:
                errors[where] = e
    if isinstance(errors["legacy"], KeyError):
        known = sorted(p.stem for p in REMOTE_ROOT.glob("*.yaml"))
        raise HighlightSenseError(
            f"{name!r} is not a local file or folder, nor a demucs model name ({', '.join(known)}) "
            f"and the HuggingFace hub did not give it ({_failure(errors['HuggingFace'])})")
    from huggingface_hub import constants

    caches = f"{constants.HF_HUB_CACHE} or {Path(torch.hub.get_dir()) / 'checkpoints'}"
    raise HighlightSenseError(
        f"cannot download the separator {name!r} ({_failure(errors['HuggingFace'])}; "
        f"{_failure(errors['legacy'])}) and it is not cached in {caches}: connect to the "
        "internet once to fetch it, or point --separator at a local model file (.th, "
        ".safetensors or a demucs repo folder)")
