"""What `detect` tells an observer of its run: the hooks `highlightsense bench` measures a run
with from the inside (model timers on the scorer and stages it builds, the first scored window,
queue depths, the second pass, the progress record's writes). Every hook does nothing here."""


class RunObserver:
    """Called in the thread that runs `detect`, except `progress` and `scored`, which the
    pipeline's event loop calls while a pass runs: keep those quick."""

    def scorer_ready(self, scorer) -> None:
        """The scorer, loaded, before anything runs."""

    def stages_built(self, stages: list) -> None:
        """A pass's feature stages (engine.operator.RestartableStage), before they run."""

    def pass_started(self, name: str, duration_sec) -> None:
        """A pass begins: "first pass", "held levels" or "second pass" (see engine.second_pass),
        over `duration_sec` of stream time (None: unknown)."""

    def progress(self, metrics) -> None:
        """The running pass's engine.pipeline.PipelineMetrics, every progress tick and once at
        its end."""

    def scored(self, scored) -> None:
        """A batch of engine.chunks.ScoredWindows, as the end of the pipeline collects it."""

    def second_pass(self, exact_from_frame: int, windows: int) -> None:
        """The second pass begins: the first pass's frames before `exact_from_frame` came out
        under a lower dB reference than the stream's; `windows` are scored again."""

    def second_pass_done(self) -> None:
        """The second pass has ended (or there was none to do after second_pass())."""

    def record_saved(self, record) -> None:
        """The progress record (engine.resume.ProgressRecord) was written."""
