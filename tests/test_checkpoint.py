"""Checkpoint loading: the seed's format, bare state dicts, the training notebook's names, and
every way a file can be wrong, each a one-line error. Checkpoints are written here, with small
models of the seed's classes (no trained weights exist on these machines)."""
import os
import pickle

import pytest
import torch

from highlightsense.engine.errors import HighlightSenseError
from highlightsense.model.checkpoint import load_model, read_state_dict
from highlightsense.model.crnn import CrnnConfig, HighlightSenseModel, infer_config

SMALL = CrnnConfig(n_mels=80, cnn_channels=(4, 8, 8, 16), rnn_hidden=12, rnn_layers=2,
                   att_dim=6, classifier_hidden=10)


def small_model(seed=0):
    torch.manual_seed(seed)
    return HighlightSenseModel.from_config(SMALL).eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and text
    return text


def test_seed_format_loads_strictly_with_hyper_parameters_from_shapes(tmp_path):
    model = small_model()
    torch.save({"model": model.state_dict(), "epochs": 10}, tmp_path / "best_model.pt")
    loaded = load_model(tmp_path / "best_model.pt")
    assert loaded.config == SMALL
    assert same_weights(model, loaded)
    assert not loaded.training


def test_bare_state_dict(tmp_path):
    model = small_model(1)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert same_weights(model, load_model(tmp_path / "bare.pt"))


def test_training_notebook_names_are_mapped(tmp_path):
    model = small_model(2)
    renamed = {}
    for key, value in model.state_dict().items():
        key = key.replace("attention.W.", "attn.fc1.").replace("attention.V.", "attn.fc2.")
        for i in range(4):
            key = key.replace(f"cnn.{i}.bn.", f"cnn.{i}.norm.")
        renamed[key] = value
    assert any(k.startswith("attn.fc1.") for k in renamed)
    assert "cnn.0.norm.weight" in renamed and "cnn.3.norm.running_mean" in renamed
    torch.save({"model": renamed, "epochs": 3}, tmp_path / "trained.pt")
    assert same_weights(model, load_model(tmp_path / "trained.pt"))


def test_seed_sized_model_hyper_parameters_are_inferred():
    state = HighlightSenseModel().state_dict()
    assert infer_config(state) == CrnnConfig()


def test_wrong_shapes_against_a_given_config(tmp_path):
    torch.save({"model": small_model().state_dict()}, tmp_path / "small.pt")
    with pytest.raises(HighlightSenseError) as e:
        load_model(tmp_path / "small.pt", config=CrnnConfig())  # the seed's full size
    text = one_line(e)
    assert "mismatched shapes" in text and "cnn.0.conv.weight (4, 2, 3, 3)" in text
    assert "(32, 2, 3, 3)" in text


def test_missing_and_unexpected_keys(tmp_path):
    state = small_model().state_dict()
    del state["rnn.weight_hh_l1"]
    state["extra.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(HighlightSenseError) as e:
        load_model(tmp_path / "broken.pt")
    text = one_line(e)
    assert "missing keys rnn.weight_hh_l1" in text
    assert "unexpected keys extra.weight" in text


def test_a_state_dict_of_another_network(tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(HighlightSenseError) as e:
        load_model(tmp_path / "other.pt")
    assert "missing keys" in one_line(e) and "unexpected keys weight, bias" in one_line(e)


class RunsCode:
    """What a hostile checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, writer):
    marker = tmp_path / "code-ran"
    payload = {"model": RunsCode(marker), "epochs": 1}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(HighlightSenseError) as e:
        load_model(path)
    text = one_line(e)
    assert "refused" in text
    if writer == "torch.save":
        assert "system" in text  # names what it would have called
    assert not marker.exists()  # and it was not called


def test_missing_file_folder_and_not_a_checkpoint(tmp_path):
    with pytest.raises(HighlightSenseError) as e:
        load_model(tmp_path / "nope.pt")
    assert "does not exist" in one_line(e)
    with pytest.raises(HighlightSenseError) as e:
        load_model(tmp_path)
    assert "is a folder" in one_line(e)
    (tmp_path / "notes.txt").write_text("not a checkpoint at all\n")
    with pytest.raises(HighlightSenseError) as e:
        load_model(tmp_path / "notes.txt")
    assert "not a PyTorch checkpoint" in one_line(e)
    torch.save({"epochs": 3, "note": "no weights"}, tmp_path / "empty.pt")
    with pytest.raises(HighlightSenseError) as e:
        read_state_dict(tmp_path / "empty.pt")
    assert "holds no state dict" in one_line(e)
