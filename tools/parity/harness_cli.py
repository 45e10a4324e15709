"""The command line the rehearsal harnesses share (icarl.py, der.py, dgr.py, memo.py, coil.py).

Each harness has three subcommands: `pilot` (run PILOT's learner, print a JSON line), `cilbench`
(run cilbench's strategy, print a JSON line) and `compare` (run both side by side and print the
tables). The options every harness takes are declared here; a harness adds its own through
`add_arguments(command, parser)` and names the extra settings its run functions read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def harness_main(
    doc: str,
    run_pilot: Callable[[Path, Path, dict, int], dict],
    run_cilbench: Callable[[Path, dict, int, str], dict],
    compare: Callable[[argparse.Namespace], None],
    *,
    classifier: str = "cnn",
    epochs: int = 3,
    lr: float = 0.01,
    seeds: int = 5,
    add_arguments: Callable[[str, argparse.ArgumentParser], None] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Parse the command line and run the subcommand. `classifier` is cilbench's default
    reading, `epochs`, `lr` and `seeds` the defaults, `settings` the extra option names (with
    their values where a subcommand lacks them) passed to the run functions."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True)
        p.add_argument("--epochs", type=int, default=epochs)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--memory", type=int, default=24, help="memory_size (a shared total)")
        p.add_argument("--seed", type=int, default=0)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name == "cilbench":
            p.add_argument("--classifier", default=classifier, choices=("nme", "cnn"))
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=seeds)
            p.add_argument("--frozen-lr", type=float, default=1e-12)
        if add_arguments is not None:
            add_arguments(name, p)
    args = parser.parse_args()
    chosen = {"epochs": args.epochs, "lr": args.lr, "batch": args.batch, "memory": args.memory}
    chosen.update({key: getattr(args, key, value) for key, value in (settings or {}).items()})
    if args.command == "compare":
        compare(args)
        return
    if args.command == "pilot":
        result = run_pilot(args.pilot, args.inputs, chosen, args.seed)
    else:
        result = run_cilbench(args.inputs, chosen, args.seed, args.classifier)
    print(json.dumps(result))
