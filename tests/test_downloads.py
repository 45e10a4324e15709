"""Download (resume, md5), unpack, checksum manifests and the decoded cache, all offline.

Downloads are served by an HTTP server on 127.0.0.1 inside the test that honours Range requests,
so resuming is exercised for real without touching the network.
"""

from __future__ import annotations

import hashlib
import http.server
import pickle
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from stream_fixtures import write_cifar100, write_core50, write_imagenet_r
from torchvision.transforms import v2

from cilbench.benchmarks.cifar100 import SplitCifar100
from cilbench.benchmarks.core50 import Core50
from cilbench.benchmarks.imagenet_r import SplitImagenetR
from cilbench.core.callbacks import SilentProgress
from cilbench.core.errors import DataError
from cilbench.data.decoded_cache import DecodedSource
from cilbench.data.downloads import Remote, download, unpack, verify_checksums
from cilbench.data.sources import FileSource
from cilbench.testing import check_stream


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    ranges: list[str | None]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        data = self.server.files[self.path]
        header = self.headers.get("Range")
        self.server.ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _RangeHandler)
    httpd.files, httpd.ranges = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _serve(server: _Server, name: str, data: bytes) -> Remote:
    server.files[f"/{name}"] = data
    url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
    return Remote(url, name, hashlib.md5(data).hexdigest())


def test_download_resumes_a_partial_file(server: _Server, tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(300_000)
    remote = _serve(server, "blob.bin", data)
    (tmp_path / "blob.bin.part").write_bytes(data[:100_000])
    path = download(remote, tmp_path)
    assert path.read_bytes() == data
    assert server.ranges == ["bytes=100000-"]
    assert not (tmp_path / "blob.bin.part").exists()
    assert download(remote, tmp_path) == path and len(server.ranges) == 1  # verified, not fetched


def test_download_with_wrong_md5_is_deleted(server: _Server, tmp_path: Path) -> None:
    remote = _serve(server, "blob.bin", b"abc" * 1000)
    wrong = Remote(remote.url, remote.filename, "0" * 32)
    with pytest.raises(DataError, match=r"Checksum mismatch for blob\.bin"):
        download(wrong, tmp_path)
    assert not list(tmp_path.iterdir())


def test_unpack_reports_a_truncated_archive(tmp_path: Path) -> None:
    write_imagenet_r(tmp_path / "src")
    archive = tmp_path / "imagenet-r.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "imagenet-r", arcname="imagenet-r")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"imagenet-r\.tar is truncated or damaged"):
        unpack(archive, tmp_path / "out")


def test_cifar_fetch_end_to_end(server: _Server, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The whole fetch: download, archive md5, unpack, per-file md5, checksums, build."""
    from torchvision.datasets import CIFAR100

    source = write_cifar100(tmp_path / "src") / "cifar-100-python"
    (source / "cilbench-checksums.json").unlink()
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-100-python")
    remote = _serve(server, archive.name, archive.read_bytes())
    md5 = {n: hashlib.md5((source / n).read_bytes()).hexdigest() for n in ("train", "test")}
    monkeypatch.setattr(CIFAR100, "url", remote.url)
    monkeypatch.setattr(CIFAR100, "tgz_md5", remote.md5)
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    meta_md5 = hashlib.md5((source / "meta").read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": meta_md5})
    root = tmp_path / "data"
    SplitCifar100().fetch(root, SilentProgress())
    rows = verify_checksums(root / "cifar-100-python")
    assert rows[0].ok and rows[0].found == "3 ok"
    check_stream("split-cifar100", root)


def test_checksum_rows_name_missing_files(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "d") / "cifar-100-python"
    (folder / "meta").unlink()
    rows = verify_checksums(folder)
    assert not rows[0].ok and [r.item for r in rows[1:]] == ["meta"]
    assert rows[1].found == "missing"


# --- decoded cache ----------------------------------------------------------------------------


def _source(tmp_path: Path) -> FileSource:
    root = write_imagenet_r(tmp_path / "d", layout="split") / "imagenet-r" / "train"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))[:12]
    return FileSource(root, files, list(range(12)), "fixture")


def test_decoded_cache_holds_the_centre_square(tmp_path: Path) -> None:
    source = _source(tmp_path)
    cached = DecodedSource(source, 10, tmp_path / "cache")
    for index in range(len(source)):
        original = source.load(index)
        height, width = original.shape[-2:]
        # shorter side -> 10, longer side truncated (torchvision's rule), then the central 10 x 10
        size = [
            max(10, int(10 * height / min(height, width))),
            max(10, int(10 * width / min(height, width))),
        ]
        resized = v2.functional.resize(original, size, antialias=True)
        top, left = round((size[0] - 10) / 2), round((size[1] - 10) / 2)
        expected = resized[:, top : top + 10, left : left + 10]
        assert torch.equal(cached.load(index), expected)
    assert np.array_equal(cached.targets, source.targets)
    assert cached.fingerprint == f"{source.fingerprint}|decoded-10"


def test_decoded_cache_is_built_once_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    source = _source(tmp_path)
    first = DecodedSource(source, 8, tmp_path / "cache")
    stamp = first.path.stat().st_mtime_ns
    again = DecodedSource(source, 8, tmp_path / "cache")
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    first.path.write_bytes(first.path.read_bytes()[:100])  # truncated
    rebuilt = DecodedSource(source, 8, tmp_path / "cache")
    assert torch.equal(rebuilt.load(3), again.load(3))
    assert b"_array" in pickle.dumps(rebuilt) and pickle.loads(pickle.dumps(rebuilt)).load(3).shape


def test_stream_option_uses_the_decoded_cache(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CILBENCH_CACHE", str(tmp_path / "cache"))
    root = write_imagenet_r(tmp_path / "d", layout="split")
    stream = check_stream("split-imagenet-r", root, decoded_size=16)
    source = stream.experiences[0].train.source
    assert isinstance(source, DecodedSource)
    assert source.load(0).shape == (3, 16, 16)
    assert list((tmp_path / "cache" / "decoded").glob("*.u8"))


def _archive(server: _Server, folder: Path, name: str, arcname: str) -> Remote:
    path = folder.parent / name
    if name.endswith(".zip"):
        shutil.make_archive(str(path)[:-4], "zip", folder.parent, arcname)
    else:
        with tarfile.open(path, "w") as tar:
            tar.add(folder, arcname=arcname)
    return _serve(server, name, path.read_bytes())


def test_imagenet_r_fetch_end_to_end(server: _Server, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    source = write_imagenet_r(tmp_path / "src") / "imagenet-r"
    (source / "cilbench-checksums.json").unlink()
    monkeypatch.setattr(
        SplitImagenetR, "remote", _archive(server, source, "imagenet-r.tar", "imagenet-r")
    )
    root = tmp_path / "data"
    SplitImagenetR().fetch(root, SilentProgress())
    assert (root / "imagenet-r-split-v1-seed1993.json").is_file()
    rows = SplitImagenetR().check(root, SilentProgress())
    assert all(row.ok for row in rows) and rows[-1].found == "1000 ok"


def test_core50_fetch_end_to_end(server: _Server, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from avalanche.benchmarks.datasets.core50 import core50_data

    source = write_core50(tmp_path / "src", frames=1) / "core50"
    remotes = [
        _archive(server, source / "core50_128x128", "core50_128x128.zip", "core50_128x128"),
        _archive(
            server, source / "batches_filelists", "batches_filelists.zip", "batches_filelists"
        ),
    ]
    unrelated = ("labels.pkl", "http://127.0.0.1:9/never", "0" * 32)  # must not be fetched
    monkeypatch.setattr(
        core50_data, "data", [(r.filename, r.url, r.md5) for r in remotes] + [unrelated]
    )
    root = tmp_path / "data"
    Core50().fetch(root, SilentProgress())
    rows = Core50().check(root, SilentProgress())
    assert all(row.ok for row in rows) and rows[-1].found == "550 ok"


def test_data_decode_prebuilds_what_runs_reuse(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from cilbench.cli.app import app

    monkeypatch.setenv("CILBENCH_CACHE", str(tmp_path / "cache"))
    root = write_imagenet_r(tmp_path / "d", layout="split")
    result = CliRunner().invoke(
        app, ["data", "decode", "split-imagenet-r", "--size", "12", "--root", str(root)]
    )
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "cache" / "decoded").glob("*.u8"))
    assert len(files) == 2  # train and test
    stamps = [f.stat().st_mtime_ns for f in files]
    SplitImagenetR(decoded_size=12).build(root)
    assert [f.stat().st_mtime_ns for f in files] == stamps
