"""The ``ferpipe`` command: every stage and tool of the pipeline under one name.

    ferpipe run                 # the whole DAG (dvc repro), then the paper-style tables
    ferpipe predict photos/     # = python -m ferpipe.predict photos/
    ferpipe serve --port 5001   # = python -m ferpipe.rest: the REST front door
    ferpipe report --help       # any stage: ferpipe <stage> [its flags]

Each subcommand is the stage module's own ``main()`` (the same flags as
``python -m ferpipe.<stage>``); ``run`` calls ``dvc repro`` so DVC stays the owner of the DAG.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

COMMANDS = {
    "ingest": "ferpipe.ingest", "validate": "ferpipe.validate", "split": "ferpipe.split",
    "weights": "ferpipe.weights", "train": "ferpipe.train", "baselines": "ferpipe.baselines.stage",
    "aggregate": "ferpipe.aggregate", "compare": "ferpipe.compare", "final-model": "ferpipe.final_model",
    "report": "ferpipe.report", "predict": "ferpipe.predict", "readme": "ferpipe.readme",
    "evidence": "ferpipe.evidence", "serve": "ferpipe.rest",
}  # fmt: skip


def run_pipeline(argv: list[str]) -> int:
    """dvc repro [args], then print the tables the README promises."""
    rc = subprocess.run([sys.executable, "-m", "dvc", "repro", *argv]).returncode
    if rc:
        return rc
    for f in [*sorted(Path("artifacts/aggregate").glob("resnet50_*/*/tables.md")), Path("artifacts/compare/compare.md")]:
        if f.exists():
            print(f.read_text())
    return 0


def usage() -> str:
    return __doc__ + "\ncommands: run, " + ", ".join(COMMANDS) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return run_pipeline(rest)
    if cmd not in COMMANDS:
        print(f"ferpipe: unknown command '{cmd}'\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd])
    sys.argv = [f"ferpipe {cmd}", *rest]  # argparse shows the right program name
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
