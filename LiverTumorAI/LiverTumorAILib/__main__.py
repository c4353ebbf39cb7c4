"""`python -m LiverTumorAILib` is the same as the `livertumorai` command."""

from LiverTumorAILib.cli import main

raise SystemExit(main())
