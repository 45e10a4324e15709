"""What a published board accepts: a JSON schema for result files plus the consistency checks a
schema cannot express.

Result files handed to `cilbench leaderboard add` are untrusted input: a missing `seed`, a string
cost, a `maybe` flag or an accuracy of JSON `true` must be refused with a message naming the field,
before anything is stored, not crash the page builder or count as a number. The schema is checked
with `jsonschema` (JSON `true` is not a number there); `check_consistency` then refuses results
whose parts disagree: another stream name in the config than in the stream, a matrix of the wrong
shape, empty test sets, unevaluated rows and accuracies impossible for the recorded test sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from cilbench.core.errors import CilbenchError

NUMBER_OR_NULL = {"type": ["number", "null"]}
OBJECT = {"type": "object"}
NAME = {"type": "string", "minLength": 1}

BOARD_RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["run_id", "config", "stream", "backbone", "accuracy_matrix", "test_sizes"],
    "properties": {
        "run_id": {"type": "string", "pattern": r"^[^/]+(/[^/]+)*$", "not": {"pattern": r"\.\."}},
        "config": {
            "type": "object",
            "required": [
                "strategy",
                "strategy_config",
                "stream",
                "stream_options",
                "backbone",
                "seed",
            ],
            "properties": {
                "strategy": NAME,
                "strategy_config": OBJECT,
                "stream": NAME,
                "stream_options": OBJECT,
                "backbone": NAME,
                "backbone_settings": OBJECT,
                "seed": {"type": "integer", "minimum": 0},
                "eval_batch_size": {"type": "integer", "minimum": 1},
            },
        },
        "stream": {
            "type": "object",
            "required": ["name", "version", "experience_classes"],
            "properties": {
                "name": NAME,
                "version": {"type": ["string", "integer"]},
                "scenario": {"type": "string"},
                "experience_classes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                },
            },
        },
        "backbone": OBJECT,
        "accuracy_matrix": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "items": {**NUMBER_OR_NULL, "minimum": 0, "maximum": 100}},
        },
        "test_sizes": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
        "cost": {
            "type": "object",
            "properties": {
                "total_seconds": {"type": "number", "minimum": 0},
                "extract_seconds": {"type": "number", "minimum": 0},
                "cache_wait_seconds": {"type": "number", "minimum": 0},
                "train_eval_seconds": {"type": "number", "minimum": 0},
                "peak_memory_mib": {"type": "number", "minimum": 0},
                "trainable_parameters": {"type": "integer", "minimum": 0},
                "exemplar_images": {"type": "integer", "minimum": 0},
                "exemplar_bytes": {"type": "integer", "minimum": 0},
            },
        },
        "flags": {
            "type": "object",
            "properties": {"exemplar_budget": {"type": ["string", "null"]}},
            "additionalProperties": {"type": ["boolean", "null"]},
        },
        "metrics": OBJECT,
        "environment": OBJECT,
        "strategy_report": OBJECT,
        "recipe": OBJECT,
        "complete": {"type": "boolean"},
    },
}
VALIDATOR = jsonschema.Draft202012Validator(BOARD_RESULT_SCHEMA)
REPLAY_CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        *BOARD_RESULT_SCHEMA["properties"]["config"]["required"],
        "backbone_settings",
        "augmentation",
        "eval_batch_size",
    ],
    "properties": {
        **BOARD_RESULT_SCHEMA["properties"]["config"]["properties"],
        "augmentation": OBJECT,
        "recipe": {"type": "string"},
    },
}
"""What `cilbench run --from` needs of a result's `config` (`RunSpec.from_record`)."""
REPLAY_VALIDATOR = jsonschema.Draft202012Validator(REPLAY_CONFIG_SCHEMA)
ACCURACY_TOLERANCE = 1e-6
"""How far accuracy * test size / 100 may be from a whole number of correct images."""


class ResultSchemaError(CilbenchError):
    """A result file a board cannot hold: malformed or inconsistent."""


def check_board_result(data: dict[str, Any] | Any, source: str) -> None:
    """Refuse a result (a RunResult or its JSON document) that a board cannot hold.

    Raises ResultSchemaError naming the field and what was wrong with it.
    """
    document = data
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        document = dataclasses.asdict(data)
    error = best_match(VALIDATOR.iter_errors(document))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "the document"
        raise ResultSchemaError(f"{source}: {where}: {error.message}")
    check_consistency(document, source)


def check_replay_config(config: Any, source: str) -> None:
    """Refuse a result's `config` that `cilbench run --from` cannot replay (ResultSchemaError)."""
    error = best_match(REPLAY_VALIDATOR.iter_errors(config))
    if error is not None:
        where = ".".join(["config", *(str(part) for part in error.absolute_path)])
        raise ResultSchemaError(
            f"{source} cannot be replayed: {where}: {error.message}. The file was edited or "
            "written by another tool; `cilbench run --from` needs the config a run records."
        )


def check_consistency(data: dict[str, Any], source: str) -> None:
    """Refuse a schema-valid result whose parts disagree (see the module docstring)."""
    config, stream = data["config"], data["stream"]
    if config["stream"] != stream["name"]:
        raise ResultSchemaError(
            f"{source}: config.stream {config['stream']!r} differs from stream.name "
            f"{stream['name']!r}; the file was edited or assembled from two runs."
        )
    _check_shape(data, source)
    _check_rows(data["accuracy_matrix"], stream.get("scenario"), source)
    _check_possible(data["accuracy_matrix"], data["test_sizes"], source)


def _check_shape(data: dict[str, Any], source: str) -> None:
    experiences = len(data["stream"]["experience_classes"])
    sizes = data["test_sizes"]
    columns = {len(row) for row in data["accuracy_matrix"]}
    test_sets = experiences if data["stream"].get("scenario") == "class-incremental" else None
    if columns != {len(sizes)} or (test_sets is not None and len(sizes) != test_sets):
        raise ResultSchemaError(
            f"{source}: accuracy_matrix rows of {sorted(columns)} cells and {len(sizes)} test "
            f"sizes do not fit {experiences} experiences (one column per test set)."
        )
    if 0 in sizes:
        raise ResultSchemaError(
            f"{source}: test set {sizes.index(0)} has 0 images (test_sizes {sizes}); "
            "an accuracy on it means nothing."
        )


def _check_rows(matrix: list[list[float | None]], scenario: str | None, source: str) -> None:
    """Every row evaluated; in class-incremental runs every test set seen so far."""
    for t, row in enumerate(matrix):
        seen = row[: t + 1] if scenario == "class-incremental" else row
        if all(a is None for a in row) or (scenario == "class-incremental" and None in seen):
            raise ResultSchemaError(
                f"{source}: accuracy_matrix row {t} is not evaluated on every test set seen "
                f"after experience {t}: {row}."
            )


def _check_possible(matrix: list[list[float | None]], sizes: list[int], source: str) -> None:
    for t, row in enumerate(matrix):
        for j, (accuracy, size) in enumerate(zip(row, sizes)):
            correct = None if accuracy is None else accuracy * size / 100
            if correct is not None and abs(correct - round(correct)) > ACCURACY_TOLERANCE:
                raise ResultSchemaError(
                    f"{source}: accuracy {accuracy} in row {t}, test set {j} is impossible "
                    f"with {size} test images ({correct:.4f} correct)."
                )
