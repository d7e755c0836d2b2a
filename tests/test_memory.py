"""engine.memory: with Demucs, glibc keeps the pages of large freed blocks for the next segment
instead of mapping (and faulting in) fresh ones each forward call."""
import json
import subprocess
import sys

# In a fresh process (malloc settings last for its life): a small HTDemucs (7.8 s segments, so its
# larger activations pass glibc's 32 MB mmap ceiling) separates one segment twice in a worker
# thread, as the pipeline runs it; the page faults of the second call.
CHILD = """
import json, resource, sys, threading
from highlightsense.engine.memory import tune_malloc
tuned = sys.argv[1] == "tuned" and tune_malloc(separating=True)
import torch
from highlightsense.benchmarks.separation_bench import small_htdemucs
torch.set_num_threads(1)
model = small_htdemucs()
segment = torch.randn(1, 2, model.valid_length(int(model.segment * model.samplerate)))
faults = []
def separate():
    with torch.no_grad():
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(segment)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=separate)
worker.start()
worker.join()
print(json.dumps({"tuned": tuned, "faults": faults[-1]}))
"""


def faults_per_segment(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_separation_reuses_pages_instead_of_faulting_fresh_ones():
    default, tuned = faults_per_segment("default"), faults_per_segment("tuned")
    assert tuned["tuned"] and not default["tuned"]
    # Measured here: 124,331 faults a segment with glibc's defaults, 2,000-2,700 tuned on an
    # idle machine, 18,173 while another test process ran beside it (the kernel reclaims some
    # of the kept pages under memory pressure): a fifth of the default is the bound.
    assert default["faults"] > 10_000
    assert tuned["faults"] < default["faults"] / 5



def test_a_model_named_in_a_config_file_sets_malloc_for_separation(tmp_path, monkeypatch):
    from highlightsense.engine import cli

    chosen = []
    monkeypatch.setattr(cli, "tune_malloc", lambda separating: chosen.append(separating))
    config = tmp_path / "with_model.yaml"
    config.write_text("model: best_model.pt\n")
    for extra in ([], ["--config", str(config)], ["--model", "best_model.pt"]):
        args = cli.parser().parse_args(["detect", "vod.mp4", "--out", str(tmp_path), *extra])
        cli._config(args, tune=True)
    assert chosen == [False, True, True]
