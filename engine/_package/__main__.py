from highlightsense.engine.cli import run

raise SystemExit(run())
