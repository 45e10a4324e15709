"""Print the accuracy matrix of a fixed set of quick runs, to show a refactor changes no number.

Run it before and after a change and compare the output byte for byte:

    python tools/matrix_digests.py > before.json   # on the old commit
    python tools/matrix_digests.py > after.json    # on the new one
    cmp before.json after.json

The runs cover every kind of strategy (frozen, trained, prompt, adapter, avalanche) on the
synthetic stream and frozen strategies on the shipped demo stream; each uses a fresh output folder
and no feature cache, so nothing is read from an earlier run.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from cilbench import RunSpec, run

RUNS: list[tuple[str, str, dict[str, str]]] = [
    ("nmc", "synthetic", {}),
    ("simplecil", "synthetic", {}),
    ("ranpac", "synthetic", {}),
    ("dkvb", "synthetic", {}),
    ("finetune", "synthetic", {"augment.preset": "flip-only"}),
    ("slca", "synthetic", {}),
    ("adam", "synthetic", {"peft": "adapter"}),
    ("l2p", "synthetic", {}),
    ("coda-prompt", "synthetic", {}),
    ("avalanche-ewc", "synthetic", {}),
    ("nmc", "split-fashion-mnist-mini", {}),
    ("simplecil", "split-fashion-mnist-mini", {}),
]


def main() -> None:
    """Print one JSON line per run: strategy, stream, overrides, run id and accuracy matrix."""
    with tempfile.TemporaryDirectory() as out:
        for strategy, stream, overrides in RUNS:
            spec = RunSpec(
                strategy=strategy,
                stream=stream,
                overrides=overrides,
                out_dir=Path(out),
                cache_dir=None,
                num_workers=0,
            )
            result = run(spec)
            line = {
                "strategy": strategy,
                "stream": stream,
                "overrides": overrides,
                "run_id": result.run_id,
                "matrix": result.accuracy_matrix,
            }
            print(json.dumps(line), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
