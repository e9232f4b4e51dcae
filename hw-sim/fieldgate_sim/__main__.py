"""`python -m fieldgate_sim`, the same as the `fieldgate-sim` command."""

from fieldgate_sim.cli import main

raise SystemExit(main())
