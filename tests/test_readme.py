"""The README's Python example runs as written (keeps the README true)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cilbench.api import STRATEGIES
from cilbench.backbones.spec import BACKBONES
from cilbench.data.downloads import sha256_file

README = Path(__file__).parents[1] / "README.md"


def _example(heading: str) -> str:
    """The first Python code block under the README heading that starts with `heading`."""
    example = re.search(rf"## {heading}.*?```python\n(.*?)```", README.read_text(), re.S)
    assert example is not None
    return example.group(1)


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(_example("Python API: a new strategy"), str(README), "exec"), {})
        printed = capsys.readouterr().out
        assert float(printed.split()[0]) > 50  # final accuracy on the synthetic stream
        assert (tmp_path / "runs" / "synthetic").is_dir()
    finally:
        STRATEGIES._items.pop("shrunk-nmc", None)  # keep the registry as other tests expect


def test_own_data_and_weights_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(_example("Python API: your own data"), str(README), "exec"), {})
        accuracy, experiences = capsys.readouterr().out.split()
    finally:
        BACKBONES.unregister("my-vit")
    assert int(experiences) == 4  # stream.increment=1 overrode the builder's 2
    assert float(accuracy) > 50  # brightness separates the classes even through random weights
    (result,) = (tmp_path / "runs" / "my-arrays").rglob("result.json")
    data = json.loads(result.read_text())
    assert data["backbone"]["weights"] == "file:my-vit.safetensors"
    assert data["backbone"]["weight_digest"] == sha256_file(tmp_path / "my-vit.safetensors")
