#!/usr/bin/env python
"""Run the frameatlas stage notebooks with papermill.

    python run_pipeline.py [CONFIG] [--stages STAGE ...] [--force STAGE] [--set section.key=value]

Exit status: 0 done; 1 a stage failed; 2 invalid config or arguments (nothing ran);
3 done, but some inputs were skipped (reasons in outputs/<run>/manifest.json); 4 another
process is writing into the run folder (its pid, host and command are named; nothing ran).
All logic lives in frameatlas.pipeline.
"""

import argparse
import sys

from frameatlas.cli import add_run_arguments, run_from_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    sys.exit(run_from_args(parser.parse_args()))
