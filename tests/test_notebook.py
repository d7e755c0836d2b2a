"""In a notebook (Jupyter, Colab): progress shows as a live bar, and plotting leaves the
notebook's matplotlib backend alone.

One real notebook, executed once for the module by nbclient in a real ipykernel (the kernel
start costs seconds), runs a real short `detect` through the Python API on generated audio.
ipywidgets is installed, as on Colab: tqdm's notebook bar is the path taken; a second run hides
ipywidgets from tqdm (its own `IProgress` switch) to take the display-handle fallback."""
import json
import re
import struct
import subprocess
import sys
import textwrap

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

from highlightsense.benchmarks.media import write_media  # noqa: E402
from highlightsense.benchmarks.synth import SyntheticVod  # noqa: E402

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SECONDS = 60
FINAL_LINE = re.compile(r"^1:00( / 1:00 \(100%\))?  \d+\.\dx realtime(  busiest: \S+ \d+%)?$")

CELLS = {
    "setup": """
        %matplotlib inline
        import sys
        import matplotlib
        from highlightsense.engine import progress
        from highlightsense.engine.config import load_config
        from highlightsense.engine.detect import detect
        cfg = load_config(overrides={"clips": False})
        print("display:", progress.progress_display())
        print("backend:", matplotlib.get_backend())
    """,
    "widget": """
        # As the README's Colab cell runs it: the command, in the cell's own thread (whose
        # event loop the kernel is running).
        from highlightsense.engine.cli import main
        print("exit:", main(["detect", SRC, "--out", OUT + "/widget", "--no-clips"]))
    """,
    "text": """
        import tqdm.notebook
        widgets, tqdm.notebook.IProgress = tqdm.notebook.IProgress, None  # as without ipywidgets
        try:
            print("display:", progress.progress_display())
            print("windows:", len(detect(SRC, OUT + "/text", cfg).windows))
        finally:
            tqdm.notebook.IProgress = widgets
    """,
    "stopped": """
        from highlightsense.engine.pipeline import PipelineMetrics, StageMetrics
        m = PipelineMetrics([StageMetrics("decode", busy_sec=1.0)])
        stopped = progress.Progress(3600.0)
        m.position_sec = 600.0
        stopped(m)
        m.finished, m.failed = m.started + 2.0, True  # as the pipeline ends on an error
        stopped(m)
    """,
    "after": """
        print("backend:", matplotlib.get_backend())
        print("pyplot figures:", sys.modules["matplotlib.pyplot"].get_fignums()
              if "matplotlib.pyplot" in sys.modules else [])
    """,
}


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """The executed notebook and its cells by name."""
    tmp = tmp_path_factory.mktemp("notebook")
    v = SyntheticVod(SECONDS, seed=1, moments=[(30.0, 40.0)], music=[], bangs=[])
    src = write_media(tmp / "talk.wav", v.blocks())
    nb = nbformat.v4.new_notebook()
    paths = f"SRC, OUT = {str(src)!r}, {str(tmp)!r}\n"
    nb.cells = [nbformat.v4.new_code_cell((paths if name == "setup" else "") +
                                          textwrap.dedent(code).strip())
                for name, code in CELLS.items()]
    # This interpreter's ipykernel, whatever other "python3" kernels are installed.
    spec = tmp / "kernels" / "highlightsense"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "highlightsense tests", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)], ensure_native_kernel=False)
    client = nbclient.NotebookClient(
        nb, timeout=300, km=KernelManager(kernel_name="highlightsense",
                                          kernel_spec_manager=specs),
        resources={"metadata": {"path": str(tmp)}})
    client.execute()
    return nb, dict(zip(CELLS, nb.cells))


def printed(cell) -> str:
    return "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream"
                   and o["name"] == "stdout")


def no_terminal_line(cell) -> None:
    streams = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream")
    assert "\r" not in streams and "\033[K" not in streams
    assert "realtime" not in streams  # no line-every-10-s either


def widget_text(html: str) -> str:
    return html.replace("\u2007", " ").replace("&amp;", "&").strip()


def bar_models(nb, cell):
    """(left text, bar, right text) widget states of each bar shown in `cell`, as last set."""
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    views = [o["data"][WIDGET_VIEW]["model_id"] for o in cell.outputs
             if o["output_type"] == "display_data" and WIDGET_VIEW in o["data"]]
    return [tuple(state[c.removeprefix("IPY_MODEL_")]["state"]
                  for c in state[view]["state"]["children"]) for view in views]


def test_kernel_chooses_the_notebook_bar(notebook):
    _, cells = notebook
    assert "display: widget" in printed(cells["setup"])


def test_detect_in_a_notebook_shows_a_live_widget_bar(notebook):
    nb, cells = notebook
    cell = cells["widget"]
    bars = bar_models(nb, cell)
    assert bars, cell.outputs
    no_terminal_line(cell)
    assert "exit: 0" in printed(cell)
    # The bar's last state (the widget models, saved with the notebook): full, green, and
    # Progress.line()'s final text beside it.
    _, bar, right = bars[0]
    assert bar["max"] == pytest.approx(SECONDS) and bar["value"] == pytest.approx(SECONDS)
    assert bar["bar_style"] == "success"
    assert FINAL_LINE.match(widget_text(right["value"])), right["value"]
    assert " / 1:00 (100%)" in widget_text(right["value"])


def test_a_stopped_run_leaves_its_bar_red_where_it_stopped(notebook):
    nb, cells = notebook
    [(_, bar, right)] = bar_models(nb, cells["stopped"])
    assert bar["max"] == 3600.0 and bar["value"] == 600.0 and bar["bar_style"] == "danger"
    assert widget_text(right["value"]).startswith("10:00 / 1:00:00 (17%)")
    no_terminal_line(cells["stopped"])


def test_without_ipywidgets_a_display_handle_shows_the_line(notebook):
    _, cells = notebook
    cell = cells["text"]
    assert "display: text" in printed(cell)
    shown = [o for o in cell.outputs if o["output_type"] == "display_data"]
    assert shown and all(WIDGET_VIEW not in o["data"] for o in shown)
    # Updated in place (update_display_data): the one output holds the last line, not the first.
    assert FINAL_LINE.match(shown[0]["data"]["text/plain"]), shown[0]["data"]
    no_terminal_line(cell)


def test_detect_leaves_the_notebook_s_matplotlib_backend_alone(notebook):
    _, cells = notebook
    before = printed(cells["setup"]).split("backend: ")[1].split("\n")[0]
    assert "inline" in before
    after = printed(cells["after"])
    assert f"backend: {before}\n" in after
    assert "pyplot figures: []" in after


def test_detect_progress_knows_the_file_s_duration(notebook):
    """With --max-duration on (the default), as with the bar's total above."""
    _, cells = notebook
    shown = [o for o in cells["text"].outputs if o["output_type"] == "display_data"]
    assert " / 1:00 (100%)" in shown[0]["data"]["text/plain"]
    assert "windows:" in printed(cells["text"])


PLOT = """
import json, sys
import matplotlib
matplotlib.use("svg")  # a caller's backend other than Agg, available without a display
from highlightsense.operators.select import Selection, WindowScore
from highlightsense.operators.sinks.plot import plot_scores
windows = [WindowScore(i, 5.0 * i, 5.0 * i + 30, (i % 7) / 7, 5.0 * i + 15) for i in range(30)]
selection = Selection(0.7, windows[5:7], windows[5:7], [windows[6], windows[13]])
path = plot_scores(sys.argv[1], windows, selection, title="stream.mp4")
print(json.dumps({"path": str(path), "backend": matplotlib.get_backend(),
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def test_plot_scores_leaves_the_callers_backend_and_pyplot_alone(tmp_path):
    """In a fresh interpreter, so that what plot_scores imports and switches is its own doing."""
    run = subprocess.run([sys.executable, "-c", PLOT, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["backend"] == "svg"
    assert not got["pyplot"]
    png = (tmp_path / "scores.png").read_bytes()
    assert got["path"] == str(tmp_path / "scores.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    # 12 x 5 inches at 100 dpi, trimmed to the drawing (bbox_inches="tight").
    assert 900 < width <= 1200 and 400 < height <= 500
