"""No code runs from a data file: the restricted CIFAR unpickler, md5 first, and a loader audit."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from stream_fixtures import accept_cifar_fixture, write_cifar100
from typer.testing import CliRunner

from cilbench.benchmarks.cifar100 import SplitCifar100
from cilbench.cli.app import app
from cilbench.core.errors import DataError
from cilbench.data.safe_pickle import load_plain_pickle, loads_plain

REPO = Path(__file__).resolve().parents[1]


class _CreatesFile:
    """Unpickling this with `pickle.load` calls open(marker, "w"): a file appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _crafted_batch(marker: Path) -> bytes:
    """A CIFAR-like batch whose `data` would create `marker` when unpickled."""
    batch = {"data": _CreatesFile(marker), "fine_labels": [0], "batch_label": "x"}
    return pickle.dumps(batch, protocol=2)


def test_the_crafted_pickle_does_run_code_with_pickle_load(tmp_path: Path) -> None:
    """Control: the payload used below really creates the file under plain pickle."""
    marker = tmp_path / "pwned"
    pickle.loads(_crafted_batch(marker))
    assert marker.exists()


def test_restricted_unpickler_refuses_the_crafted_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load (io|builtins)\.open"):
        loads_plain(_crafted_batch(marker))
    assert not marker.exists()


def test_restricted_unpickler_reads_what_cifar_files_hold() -> None:
    batch = {
        "data": np.arange(12, dtype=np.uint8).reshape(2, 6),
        "fine_labels": [3, 4],
        "filenames": ["a.png", "b.png"],
        "batch_label": "training batch 1 of 1",
        "raw": b"\x00\xff",
    }
    for protocol in (0, 2):
        loaded = loads_plain(pickle.dumps(batch, protocol=protocol))
        assert loaded.keys() == batch.keys()
        assert np.array_equal(loaded["data"], batch["data"]) and loaded["data"].dtype == np.uint8
        assert loaded["fine_labels"] == [3, 4] and loaded["raw"] == b"\x00\xff"


def test_python2_array_pickle_loads() -> None:
    """The opcodes Python 2's cPickle wrote for the official files: numpy.core names, py2 str."""
    pixels = b"".join(b"\\x%02x" % c for c in range(6))
    python2 = (
        b"(dp1\nS'data'\np2\ncnumpy.core.multiarray\n_reconstruct\np3\n(cnumpy\nndarray\np4\n"
        b"(I0\ntS'b'\ntRp5\n(I1\n(I2\nI3\ntcnumpy\ndtype\np6\n(S'u1'\nI0\nI1\ntRp7\n(I3\nS'|'\n"
        b"NNNI-1\nI-1\nI0\ntbI00\nS'" + pixels + b"'\ntbsS'fine_labels'\n(lp8\nI1\naI2\nas."
    )
    loaded = loads_plain(python2)
    assert loaded["data"].tolist() == [[0, 1, 2], [3, 4, 5]] and loaded["fine_labels"] == [1, 2]


@pytest.mark.parametrize(
    ("value", "protocol", "message"),
    [
        (np.array([1, "a"], dtype=object), 2, "an object array is not allowed"),
        ({"x": {1, 2}}, 2, "refused to load __builtin__.set"),
        ({"x": {1, 2}}, 4, "a set is not allowed"),  # protocol 4 has a set opcode
        ({"x": io.BytesIO()}, 2, "refused to load _io.BytesIO"),
    ],
)
def test_restricted_unpickler_refuses_other_objects(value: object, protocol: int, message: str):
    with pytest.raises(pickle.UnpicklingError, match=message):
        loads_plain(pickle.dumps(value, protocol=protocol))


def test_a_codec_other_than_latin1_is_refused() -> None:
    import codecs

    class _Rot13:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (codecs.encode, ("text", "rot13"))

    with pytest.raises(pickle.UnpicklingError, match="codec 'rot13' is not allowed"):
        loads_plain(pickle.dumps(_Rot13(), protocol=2))


def test_a_non_dict_pickle_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(DataError, match=r"meta holds a list, not the expected dict"):
        load_plain_pickle(path)


def _crafted_cifar(tmp_path: Path) -> tuple[Path, Path]:
    root = write_cifar100(tmp_path / "data", train_per_class=1)
    marker = tmp_path / "pwned"
    (root / "cifar-100-python" / "train").write_bytes(_crafted_batch(marker))
    return root, marker


def test_crafted_cifar_pickle_is_refused_by_md5_before_reading(tmp_path: Path) -> None:
    root, marker = _crafted_cifar(tmp_path)
    with pytest.raises(DataError, match="differ from the official release") as error:
        SplitCifar100().build(root)
    assert "nothing was read" in str(error.value)
    assert not marker.exists()


def test_crafted_cifar_pickle_is_refused_even_with_a_matching_md5(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """md5 bypassed (the file's md5 declared official): the unpickler itself must hold."""
    root, marker = _crafted_cifar(tmp_path)
    accept_cifar_fixture(monkeypatch, root)
    with pytest.raises(DataError, match="refused to load") as error:
        SplitCifar100().build(root)
    assert f"cilbench data fetch split-cifar100 --root {root}" in str(error.value)
    assert not marker.exists()


def test_crafted_cifar_pickle_through_the_cli(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, marker = _crafted_cifar(tmp_path)
    runner = CliRunner()
    check = runner.invoke(app, ["data", "check", "split-cifar100", "--root", str(root)])
    assert check.exit_code == 2 and "Traceback" not in check.output
    assert f"cilbench data fetch split-cifar100 --root {root}" in " ".join(check.output.split())
    run = [
        "run", "--stream", "split-cifar100", "--data-root", str(root), "--backbone",
        "tiny-vit-random", "--out", str(tmp_path / "runs"), "--device", "cpu",
    ]  # fmt: skip
    refused = runner.invoke(app, [*run, "--set", "stream.verify_md5=false"])
    assert refused.exit_code == 2 and "refused to load" in refused.output
    assert "Traceback" not in refused.output
    accept_cifar_fixture(monkeypatch, root)
    bypassed = runner.invoke(app, ["data", "check", "split-cifar100", "--root", str(root)])
    assert bypassed.exit_code == 2 and "refused to load" in bypassed.output
    assert not marker.exists()


# --- audit: every loader in the source tree is a safe one -------------------------------------

UNSAFE_LOADERS = {
    r"\bpickle\.loads?\(": "pickle.load runs code from the file; use cilbench.data.safe_pickle",
    r"\bUnpickler\(": "a plain Unpickler runs code; use PlainUnpickler",
    r"\b(joblib|dill|shelve|marshal|cloudpickle)\.(loads?|open)\(": "these unpickle",
    r"\byaml\.(unsafe_)?load\(": "use yaml.safe_load",
    r"\btorch\.load\((?![^)]*weights_only=True)": "torch.load needs weights_only=True",
    r"\bnp\.load\((?![^)]*allow_pickle=False)": "np.load needs allow_pickle=False",
    r"(?<![.\w])(eval|exec)\(": "no code from strings",
}


def test_no_unsafe_loader_in_the_source_tree() -> None:
    """Audit of cilbench/, strategies/, benchmarks/: pickles only through the restricted
    unpickler, torch.load with weights_only=True, np.load with allow_pickle=False, weights and
    caches and checkpoints through safetensors (no code), JSON with json.loads."""
    found = []
    for folder in ("cilbench", "strategies", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text()
            for pattern, why in UNSAFE_LOADERS.items():
                for match in re.finditer(pattern, text):
                    line = text.count("\n", 0, match.start()) + 1
                    found.append(f"{path.relative_to(REPO)}:{line}: {why}")
    assert found == []


def test_the_audit_catches_an_unsafe_call() -> None:
    """The patterns above are live: each flags the call it is meant to flag."""
    unsafe = [
        "pickle.load(handle)",
        "torch.load(path, map_location='cpu')",
        "np.load(path)",
        "joblib.load(path)",
        "eval(text)",
    ]
    safe = [
        "torch.load(path, map_location='cpu', weights_only=True)",
        "np.load(p, allow_pickle=False)",
        "model.eval()",
    ]
    flagged = lambda code: any(re.search(p, code) for p in UNSAFE_LOADERS)  # noqa: E731
    assert all(flagged(code) for code in unsafe)
    assert not any(flagged(code) for code in safe)
