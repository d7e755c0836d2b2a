from highlightsense.engine.cli import main

raise SystemExit(main())
