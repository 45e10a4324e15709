"""Feature cache under concurrency: two processes extracting one key do the work once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cilbench.features import FeatureStore
from cilbench.testing import synthetic_stream, tiny_backbone


class _SlowStore(FeatureStore):
    """Announces that it started extracting, then takes its time, like a big backbone would."""

    def __init__(self, *args: Any, started: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.started = started

    def _extract(self, source: Any) -> torch.Tensor:
        self.started.set()
        time.sleep(2.0)
        return super()._extract(source)


def _extract_in_child(cache: str, events: dict[str, Any], results: Any, name: str) -> None:
    store = _SlowStore(tiny_backbone(), Path(cache), started=events["started"])
    source = synthetic_stream().experiences[0].train.source
    events["ready"].set()  # imports done, backbone built: the next step takes milliseconds
    events["go"].wait()
    features = store.source_features(source)
    # numpy, not a tensor: torch would share the tensor's memory through a file descriptor that
    # dies with this process before the parent reads it
    results.put(
        (name, store.images_forwarded, store.cache_hits, features.numpy(), store.wait_seconds)
    )


@pytest.mark.slow
def test_two_processes_extract_one_key_once(tmp_path: Path):
    context = multiprocessing.get_context("spawn")
    events = {
        name: {kind: context.Event() for kind in ("ready", "go", "started")}
        for name in ("first", "second")
    }
    results = context.Queue()
    processes = [
        context.Process(target=_extract_in_child, args=(str(tmp_path), events[n], results, n))
        for n in ("first", "second")
    ]
    for process in processes:
        process.start()
    assert all(events[n]["ready"].wait(180) for n in events), "an extractor never got ready"
    events["first"]["go"].set()
    assert events["first"]["started"].wait(60), "the first extractor never started"
    # The first process is inside its 2 s extraction now; without the lock the second would
    # find no file and extract again.
    events["second"]["go"].set()
    outcomes = {name: rest for name, *rest in (results.get(timeout=120) for _ in range(2))}
    for process in processes:
        process.join(30)
    num_images = len(synthetic_stream().experiences[0].train.source)
    assert outcomes["first"][:2] == [num_images, 0]
    assert outcomes["second"][:2] == [0, 1], "the second process redid the work"
    assert not events["second"]["started"].is_set()
    # The wait is measured apart (a run's cost.cache_wait_seconds), so it is not counted as work.
    assert outcomes["second"][3] > 0.5 and outcomes["first"][3] < outcomes["second"][3]
    first, second = (torch.from_numpy(outcomes[n][2]) for n in ("first", "second"))
    assert torch.equal(first, second)
    (file,) = (tmp_path / "features").glob("*.safetensors")
    assert torch.equal(load_file(str(file))["features"], first)
    assert not list((tmp_path / "features").glob("*.tmp")), "a temporary file was left behind"
