"""`python -m scratchformer.training <command> ...` and `accelerate launch -m scratchformer.training ...`."""

from scratchformer.training.cli import main

raise SystemExit(main())
