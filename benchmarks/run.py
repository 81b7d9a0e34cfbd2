#!/usr/bin/env python
"""Run the actgen benchmark suite: `python benchmarks/run.py [options]` is `actgen bench [options]`.

See benchmarks/README.md; `python benchmarks/run.py --help` lists the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actgen.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="benchmarks/run.py"))
