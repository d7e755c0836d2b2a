"""Loading a CRNN checkpoint without running code from the file.

The seed loads with torch.load(weights_only=False), which runs whatever the pickle says. Here
only tensors and plain containers are accepted (weights_only=True). The file may be the seed's
{'model': state_dict, 'epochs': n} or a bare state dict, with the inference notebook's names or
the training notebook's (attn.fc1/fc2, cnn.N.norm). Loading is strict; every way a file can be
wrong ends in one HighlightSenseError line.
"""
import pickle
import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.model.crnn import CrnnConfig, HighlightSenseModel, infer_config

# Training notebook name -> inference notebook name (same shapes).
_RENAMES = [
    (re.compile(r"^attn\.fc1\."), "attention.W."),
    (re.compile(r"^attn\.fc2\."), "attention.V."),
    (re.compile(r"^cnn\.(\d+)\.norm\."), r"cnn.\1.bn."),
]


def _listing(keys, limit: int = 4) -> str:
    keys = list(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, with inference names, on the CPU."""
    path = Path(path)
    what = f"model checkpoint {path}"
    if not path.is_file():
        reason = "is a folder" if path.is_dir() else "does not exist"
        raise HighlightSenseError(f"{what} {reason}; give the .pt file with --model")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says enough
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise HighlightSenseError(
                f"{what} refused: loading it would call {found.group(1)}, which is code, not "
                f"weights (only tensors are loaded); re-save the state dict with torch.save"
            ) from None
        raise HighlightSenseError(
            f"{what} is not a PyTorch checkpoint of weights (torch.load with weights_only "
            f"cannot read it)") from None
    except OSError as e:
        raise HighlightSenseError(f"cannot read {what}: {e.strerror or e}") from None
    except Exception:  # torch's errors for a file that is not a checkpoint vary (KeyError, ...)
        raise HighlightSenseError(f"{what} is not a PyTorch checkpoint (torch.load cannot read it)"
                                  ) from None
    state = data.get("model", data) if isinstance(data, dict) else data
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise HighlightSenseError(
            f"{what} holds no state dict (expected {{'model': state_dict, ...}} or a state dict)")
    return {_rename(k): v for k, v in state.items()}


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def load_model(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
               config: Optional[CrnnConfig] = None) -> HighlightSenseModel:
    """The CRNN with the checkpoint's weights, in eval mode on `device`.

    Without `config` the hyper-parameters are read from the checkpoint's shapes; with it, a
    checkpoint of other shapes is refused, naming the tensors that differ.
    """
    state = read_state_dict(path)
    if config is None:
        try:
            config = infer_config(state)
        except (KeyError, ValueError, IndexError):
            config = CrnnConfig()  # unreadable shapes: compare with the seed's, name the faults
    model = HighlightSenseModel.from_config(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]  # in the model's order
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model wants {tuple(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if wrong:
        problems.append(f"mismatched shapes {_listing(wrong, 3)}")
    if problems:
        raise HighlightSenseError(
            f"model checkpoint {path} does not fit the HighlightSense CRNN: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
