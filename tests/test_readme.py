"""The README's Python example runs as written (keeps the README true)."""

from __future__ import annotations

import re
from pathlib import Path

from cilbench.api import STRATEGIES

README = Path(__file__).parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    example = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S)
    assert example is not None
    try:
        exec(compile(example.group(1), str(README), "exec"), {})
        printed = capsys.readouterr().out
        assert float(printed.split()[0]) > 50  # final accuracy on the synthetic stream
        assert (tmp_path / "runs" / "synthetic").is_dir()
    finally:
        STRATEGIES._items.pop("shrunk-nmc", None)  # keep the registry as other tests expect
