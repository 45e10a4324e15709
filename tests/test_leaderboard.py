"""Leaderboards: validation, math on hand-made results, published numbers, staleness, replay."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cilbench.boards.leaderboard import (
    LeaderboardError,
    add,
    aggregate,
    load_board,
)
from cilbench.boards.pages import build, stale
from cilbench.boards.references import (
    SHARED_VALUE_NOTE,
    ReferenceFileError,
    load_references,
    shared_values,
    source_document,
)
from cilbench.cli.app import app
from cilbench.core.errors import CorruptFileError, RegistryError
from cilbench.core.results import RunResult, load_result, save_result

REPO_BOARDS = Path(__file__).parents[1] / "leaderboards"
OPTIONS = {"num_classes": 2, "increment": 1, "init_classes": 0, "class_order": "natural"}


def _result(seed: int, matrix: list[list[float | None]], **changes: Any) -> RunResult:
    """A two-task result on the synthetic stream; its stored metrics are deliberately wrong."""
    config = {
        "strategy": "nmc",
        "strategy_config": {},
        "stream": "synthetic",
        "stream_options": dict(OPTIONS),
        "backbone": "tiny-vit-random",
        "backbone_settings": {},
        "seed": seed,
        "eval_batch_size": 128,
        "device": "cpu",
    }
    config.update(changes.pop("config", {}))
    result = RunResult(
        run_id=f"synthetic/nmc-tiny-vit-random-seed{seed}-{changes.pop('digest', 'abc')}",
        config=config,
        stream={
            "name": "synthetic",
            "version": "1",
            "scenario": "class-incremental",
            "experience_classes": [[0], [1]],
        },
        backbone={"tag": "tiny-vit-random"},
        accuracy_matrix=matrix,
        test_sizes=[100, 300],
        metrics={"final_accuracy": 99.0, "average_accuracy": 99.0},  # never read by the board
        cost={"total_seconds": 10.0 + seed, "peak_memory_mib": 100.0, "trainable_parameters": 0},
        flags={"uses_exemplars": False, "frozen_backbone": True},
        complete=True,
    )
    for key, value in changes.items():
        setattr(result, key, value)
    return result


SEED0 = [[80.0, None], [60.0, 40.0]]  # sample-weighted final (60*100 + 40*300)/400 = 45
SEED1 = [[90.0, None], [70.0, 60.0]]  # sample-weighted final (70*100 + 60*300)/400 = 62.5


def _files(tmp_path: Path, *results: RunResult) -> list[Path]:
    paths = []
    for i, result in enumerate(results):
        path = tmp_path / "runs" / f"{i}.json"
        save_result(result, path)
        paths.append(path)
    return paths


def _references(root: Path, *entries: dict[str, Any]) -> None:
    base = {
        "strategy": "nmc",
        "stream": "synthetic",
        "protocol": {"increment": 1},
        "backbone": "tiny-vit-random",
        "source": "a test",
        "url": "https://example.org/paper#table-1",
        "evidence": "LOG",
        "verified": True,
    }
    root.mkdir(parents=True, exist_ok=True)
    references = [{**base, **entry} for entry in entries]
    (root / "reference.json").write_text(json.dumps({"references": references}))


def test_rows_are_recomputed_from_matrices_with_mean_and_sample_std(tmp_path: Path):
    board = tmp_path / "boards"
    add(_files(tmp_path, _result(0, SEED0), _result(1, SEED1)), board)
    (row,) = aggregate(load_board(board, "synthetic"))
    assert row.seeds == [0, 1]
    # Sample-weighted: 45 and 62.5. Task-averaged: (60+40)/2 = 50 and (70+60)/2 = 65.
    assert row.stats["final_accuracy"] == pytest.approx((53.75, 17.5 / math.sqrt(2)))
    assert row.stats["final_accuracy_task_averaged"] == pytest.approx((57.5, 15 / math.sqrt(2)))
    # A_1 is the first row alone: 80 and 90 in both conventions.
    assert row.stats["average_accuracy"][0] == pytest.approx(((80 + 45) / 2 + (90 + 62.5) / 2) / 2)
    assert row.stats["average_accuracy_task_averaged"][0] == pytest.approx(
        ((80 + 50) / 2 + (90 + 65) / 2) / 2
    )
    assert row.stats["forgetting"] == pytest.approx((20.0, 0.0))
    assert row.stats["average_step_drop"] == pytest.approx((20.0, 0.0))
    assert row.curve == pytest.approx([85.0, 53.75])
    assert row.wall_seconds == pytest.approx(10.5)
    assert row.backbone == "tiny-vit-random"


def test_variants_of_one_strategy_are_named_by_their_variant_key():
    def adam(peft: str, seed: int) -> RunResult:
        config = {"strategy": "adam", "strategy_config": {"peft": peft, "epochs": 1}}
        return _result(seed, SEED0, config=config)

    rows = aggregate([adam("lora", 0), adam("adapter", 0), adam("adapter", 1)])
    assert sorted(r.name for r in rows) == ["adam [adapter]", "adam [lora]"]
    nmc = [_result(0, SEED0), _result(0, SEED0, config={"strategy_config": {"shrink": 0.5}})]
    names = [r.name for r in aggregate(nmc)]  # no variant key: a config hash tells them apart
    assert len(set(names)) == 2 and all(n.startswith("nmc [") for n in names)


def test_the_backbone_column_names_the_input_size(tmp_path: Path):
    sized = _result(0, SEED0, config={"backbone_settings": {"image_size": 56}})
    add(_files(tmp_path, sized), tmp_path / "b")
    (row,) = aggregate(load_board(tmp_path / "b", "synthetic"))
    assert row.backbone == "tiny-vit-random @ 56 px"


def test_one_seed_has_no_std(tmp_path: Path):
    add(_files(tmp_path, _result(0, SEED0)), tmp_path / "b")
    (row,) = aggregate(load_board(tmp_path / "b", "synthetic"))
    assert row.stats["final_accuracy"] == (45.0, None)


def test_flags_say_yes_no_undeclared_or_not_applicable(tmp_path: Path):
    """A strategy without prompts reports no prompt vote: not applicable, not unknown."""
    flags = {"uses_exemplars": False, "frozen_backbone": None, "key_init_on_future_inputs": True}
    _references(tmp_path / "b")
    add(_files(tmp_path, _result(0, SEED0, flags=flags)), tmp_path / "b")
    build(tmp_path / "b")
    lines = (tmp_path / "b" / "synthetic.md").read_text().splitlines()
    _, _, _, header, _, row = [line for line in lines if line.startswith("|")]  # details table
    cells = dict(zip(_cells(header), _cells(row)))
    assert cells["exemplars"] == "no" and cells["frozen backbone"] == "?"
    assert cells["key init on future inputs"] == "yes"
    assert cells["batch-wise prompt vote"] == "n/a"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_published_number_and_gap_in_its_own_convention(tmp_path: Path):
    board = tmp_path / "boards"
    _references(
        board,
        {"final_accuracy": 50.0, "convention": "task-averaged"},
        {"final_accuracy": 50.0, "convention": "sample-weighted"},
        {"final_accuracy": 1.0, "convention": "task-averaged", "backbone": "other"},
        {"final_accuracy": 1.0, "convention": "task-averaged", "protocol": {"increment": 5}},
    )
    add(_files(tmp_path, _result(0, SEED0), _result(1, SEED1)), board)
    (row,) = aggregate(load_board(board, "synthetic"), load_references(board / "reference.json"))
    assert [r.convention for r in row.references] == ["task-averaged", "sample-weighted"]
    assert row.gap(row.references[0]) == pytest.approx(57.5 - 50.0)
    assert row.gap(row.references[1]) == pytest.approx(53.75 - 50.0)
    build(board)
    page = (board / "synthetic.md").read_text()
    assert "| task-avg | 57.50 ± 10.61 |" in page and "| 50.00 (+7.50) |" in page
    csv_row = (board / "synthetic.csv").read_text().splitlines()[1]
    assert ",53.7500,12.3744," in csv_row


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": {"strategy": "nmcc"}}, "Did you mean 'nmc'?"),
        ({"complete": False}, "incomplete run"),
        ({"accuracy_matrix": [[80.0, None]]}, "incomplete run"),
        ({"stream": {"name": "synthetic", "version": "0", "experience_classes": [[0], [1]]}},
         "version '0'"),
    ],
)  # fmt: skip
def test_add_refuses_bad_results(tmp_path: Path, change: dict[str, Any], message: str):
    with pytest.raises((LeaderboardError, RegistryError), match=message):
        add(_files(tmp_path, _result(0, SEED0, **change)), tmp_path / "boards")
    assert not (tmp_path / "boards" / "synthetic").exists()


def test_add_refuses_another_protocol(tmp_path: Path):
    board = tmp_path / "boards"
    add(_files(tmp_path, _result(0, SEED0)), board)
    other = _result(1, SEED1, config={"stream_options": {**OPTIONS, "class_order": "seed:3"}})
    with pytest.raises(LeaderboardError, match=r"protocol differs .* in options"):
        add(_files(tmp_path, other), board)


def test_build_check_finds_stale_pages(tmp_path: Path):
    board = tmp_path / "boards"
    _references(board, {"final_accuracy": 50.0, "convention": "task-averaged"})
    add(_files(tmp_path, _result(0, SEED0)), board)
    assert {p.name for p in stale(board)} >= {"README.md", "synthetic.md", "synthetic-time.png"}
    build(board)
    assert stale(board) == []
    add(_files(tmp_path, _result(1, SEED1)), board)  # a new result, pages not rebuilt
    assert {p.name for p in stale(board)} == {
        "README.md",
        "synthetic.md",
        "synthetic.csv",
        "synthetic-accuracy.png",
        "synthetic-time.png",
    }
    build(board)
    (board / "synthetic.md").write_text("edited by hand")
    assert [p.name for p in stale(board)] == ["synthetic.md"]
    check = CliRunner().invoke(app, ["leaderboard", "build", "--check", "--root", str(board)])
    assert check.exit_code == 1 and "stale" in check.output


def test_the_repository_leaderboards_are_up_to_date():
    assert stale(REPO_BOARDS) == [], "run `cilbench leaderboard build` and commit the pages"


def test_reference_numbers_name_their_source_url_convention_and_status():
    references = load_references(REPO_BOARDS / "reference.json")
    assert {"l2p", "dualprompt", "coda-prompt", "slca", "simplecil"} <= {
        r.strategy for r in references
    }
    for ref in references:
        assert ref.convention in ("sample-weighted", "task-averaged")
        assert ref.source and ref.evidence
        assert ref.url.startswith("https://"), ref
        assert ref.verified == (ref.evidence in ("LOG", "IMG", "README", "DER"))
        assert ref.verified or ref.note, f"unverified entry without a note: {ref}"


def test_no_source_gives_one_number_to_two_protocols_without_saying_why():
    references = load_references(REPO_BOARDS / "reference.json")
    pairs = [
        (a.strategy, a.stream, a.final_accuracy, b.strategy, b.stream)
        for a, b in shared_values(references)
    ]
    assert pairs == [], f"same value from one source for two protocols, no note: {pairs}"


def test_a_number_copied_to_another_stream_of_the_same_repository_is_caught(tmp_path: Path):
    base = {"strategy": "ranpac", "final_accuracy": 92.2, "convention": "task-averaged"}
    csv = "https://github.com/RanPAC/RanPAC/blob/abc/paper_tables/Table_data_main_{}.csv"
    _references(
        tmp_path,
        {**base, "stream": "split-cifar100", "url": csv.format("cifar224")},
        {**base, "stream": "vtab", "url": csv.format("vtab")},
    )
    references = load_references(tmp_path / "reference.json")
    assert len(shared_values(references)) == 1
    explained = [
        {**base, "stream": s, "url": csv.format(s), "note": f"{SHARED_VALUE_NOTE} as ..., checked"}
        for s in ("split-cifar100", "vtab")
    ]
    _references(tmp_path, *explained)
    assert shared_values(load_references(tmp_path / "reference.json")) == []


def test_source_document_groups_files_of_a_repository_and_versions_of_a_paper():
    assert source_document("https://github.com/A/B/blob/c/x.csv") == "github.com/a/b"
    assert source_document("https://arxiv.org/abs/2303.05118v4") == "arxiv:2303.05118"
    assert source_document("https://arxiv.org/html/2303.05118") == "arxiv:2303.05118"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": ""}, "missing url"),
        ({"url": "see the paper"}, "url must be an https link"),
        ({"convention": "task-avg"}, "Did you mean 'task-averaged'"),
        ({"evidence": "3P", "verified": True}, "cannot verify"),
        ({"final_acc": 50.0}, "unknown field 'final_acc'"),
    ],
)
def test_reference_entries_are_validated(tmp_path: Path, change: dict[str, Any], message: str):
    _references(tmp_path, {"final_accuracy": 50.0, "convention": "task-averaged", **change})
    with pytest.raises(ReferenceFileError, match=message):
        load_references(tmp_path / "reference.json")


def test_run_from_replays_a_stored_result(tmp_path: Path):
    runner = CliRunner()
    args = ["--stream", "synthetic", "--set", "stream.num_classes=4", "--out", str(tmp_path / "a")]
    first = runner.invoke(app, ["run", *args, "--json"])
    assert first.exit_code == 0, first.output
    (path,) = (tmp_path / "a").rglob("result.json")
    replay = ["run", "--from", str(path), "--out", str(tmp_path / "b"), "--json"]
    same = runner.invoke(app, replay)
    assert same.exit_code == 0, same.output
    assert "metrics match the stored result exactly" in same.stderr
    tampered = load_result(path)
    tampered.accuracy_matrix[-1][0] = 0.0
    save_result(tampered, path)
    differs = runner.invoke(app, replay)
    assert differs.exit_code == 1 and "accuracy differs by up to" in differs.stderr


@pytest.mark.parametrize(
    ("name", "settings", "frozen", "future_inputs"),
    [
        ("nmc", {}, True, False),
        ("slca", {}, False, False),
        ("finetune", {}, False, False),
        ("finetune", {"train_backbone": "false"}, True, False),
        ("dkvb", {}, True, True),
        ("dkvb", {"key_init_stream": "synthetic"}, True, False),
    ],
)
def test_strategies_declare_leaderboard_flags(name, settings, frozen, future_inputs):
    from cilbench.api import STRATEGIES
    from cilbench.core.config import resolve

    cls = STRATEGIES.get(name)
    flags = cls(resolve(cls.Config, settings)).leaderboard_flags()
    assert flags["frozen_backbone"] is frozen
    assert flags["key_init_on_future_inputs"] is future_inputs
    assert flags["uses_exemplars"] is False


def _set(document: dict[str, Any], dotted: str, value: Any) -> None:
    """Set (or with value DELETE remove) a field of a result document by its dotted path."""
    *parents, last = dotted.split(".")
    for part in parents:
        document = document[int(part)] if part.isdigit() else document[part]
    if value is DELETE:
        del document[last]
    elif last.isdigit():
        document[int(last)] = value
    else:
        document[last] = value


DELETE = object()
ZERO_EXPERIENCES = {"stream.experience_classes": [], "accuracy_matrix": [], "test_sizes": []}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"config.strategy": DELETE}, "'strategy' is a required property"),
        ({"config.seed": DELETE}, "'seed' is a required property"),
        ({"config.strategy_config": DELETE}, "'strategy_config' is a required property"),
        ({"config": ["nmc"]}, r"config: \['nmc'\] is not of type 'object'"),
        ({"config.stream_options": []}, "stream_options: .* is not of type 'object'"),
        ({"stream": []}, "stream: .* is not of type 'object'"),
        ({"flags": [True]}, "flags: .* is not of type 'object'"),
        ({"cost.total_seconds": "10"}, "total_seconds: '10' is not of type 'number'"),
        ({"flags.uses_exemplars": "maybe"}, "uses_exemplars: 'maybe' is not of type"),
        (ZERO_EXPERIENCES, "should be non-empty"),
        ({"config.stream": "split-fashion-mnist"}, "differs from stream.name 'synthetic'"),
        ({"accuracy_matrix.1.1": True}, "accuracy True in row 1 is not in"),
        ({"accuracy_matrix.1.0": 33.3}, "accuracy 33.3 in row 1, test set 0 is impossible"),
        ({"test_sizes": [0, 0]}, "test set 0 has 0 images"),
        ({"accuracy_matrix.0": [None, None]}, "row 0 is not evaluated"),
        ({"test_sizes": [100, 300, 50], "accuracy_matrix": [[80, None, None], [60, 40, 50]]},
         "do not fit 2 experiences"),
        ({"run_id": "synthetic/"}, "run_id: 'synthetic/' does not match"),
        ({"run_id": "synthetic/../../x"}, "run_id: .* should not be valid"),
        ({"config.seed": -1}, "seed: -1 is less than the minimum of 0"),
    ],
)  # fmt: skip
def test_add_refuses_malformed_or_inconsistent_results(
    tmp_path: Path, changes: dict[str, Any], message: str
):
    document = json.loads(_result(0, SEED0).to_json())
    for dotted, value in changes.items():
        _set(document, dotted, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    board = tmp_path / "boards"
    outcome = CliRunner().invoke(app, ["leaderboard", "add", str(path), "--root", str(board)])
    assert outcome.exit_code == 2, outcome.output
    assert isinstance(outcome.exception, SystemExit)  # a message, not a traceback
    assert re.search(message, " ".join(outcome.stderr.split())), outcome.stderr
    assert not board.exists()


def test_a_result_file_that_never_ends_is_refused_unread(tmp_path: Path):
    with pytest.raises(CorruptFileError, match="longer than 16 MiB"):
        add([Path("/dev/zero")], tmp_path / "boards")


def test_a_board_counts_each_configuration_and_seed_once(tmp_path: Path):
    board = tmp_path / "boards"
    add(_files(tmp_path, _result(0, SEED0)), board)
    add(_files(tmp_path, _result(0, SEED0)), board)  # the same file again changes nothing
    twin = _result(0, SEED1, digest="def")  # same config and seed, another run id
    with pytest.raises(LeaderboardError, match="already holds this configuration with seed 0"):
        add(_files(tmp_path, twin), board)
    with pytest.raises(LeaderboardError, match="with seed 1"):  # twins within one call
        add(_files(tmp_path, _result(1, SEED1), _result(1, SEED1, digest="x")), board)
    assert len(list((board / "synthetic").glob("*.json"))) == 1


def test_a_stored_result_is_replaced_only_with_replace(tmp_path: Path):
    board = tmp_path / "boards"
    add(_files(tmp_path, _result(0, SEED0)), board)
    (path,) = _files(tmp_path, _result(0, SEED0, cost={"total_seconds": 1.0}))
    args = ["leaderboard", "add", str(path), "--root", str(board)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "Pass --replace" in refused.stderr
    assert CliRunner().invoke(app, [*args, "--replace"]).exit_code == 0
    (stored,) = (board / "synthetic").glob("*.json")
    assert load_result(stored).cost == {"total_seconds": 1.0}


def test_page_text_from_results_is_escaped(tmp_path: Path):
    board = tmp_path / "boards"
    _references(board)
    tag = "<script>x</script>\n# heading | cell"
    add(_files(tmp_path, _result(0, SEED0, config={"backbone": tag})), board)
    build(board)
    page = (board / "synthetic.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| nmc")]
    assert len(rows) == 2  # main and details table
    assert all("&lt;script&gt;x&lt;/script&gt; # heading \\| cell" in row for row in rows)
    assert "<script>" not in page and "\n# heading" not in page


def _tables(page: str) -> list[list[list[str]]]:
    """Every markdown table of a page: rows of cells, header first (separator dropped)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in page.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(_cells(line))
        previous = line
    return tables


def test_the_main_table_fits_a_laptop_screen_and_details_keep_the_rest(tmp_path: Path):
    _references(tmp_path / "b", {"final_accuracy": 50.0, "convention": "sample-weighted"})
    add(_files(tmp_path, _result(0, SEED0), _result(1, SEED1)), tmp_path / "b")
    build(tmp_path / "b")
    main, details = _tables((tmp_path / "b" / "synthetic.md").read_text())
    assert len(main[0]) <= 12
    assert main[1][main[0].index("published (gap)")] == "50.00 (+3.75)"
    assert "peak memory (MiB)" in details[0] and "final acc (task-averaged)" in details[0]
    readme_main = _tables((tmp_path / "b" / "README.md").read_text())[0]
    assert len(readme_main[0]) <= 12
    for path in REPO_BOARDS.glob("*.md"):
        if path.name != "reference.md":
            assert all(len(t[0]) <= 12 for t in _tables(path.read_text())[:1]), path


def test_time_leaves_out_extraction_and_lock_waits_and_says_who_paid(tmp_path: Path):
    paid = {"extract_seconds": 6.0, "cache_wait_seconds": 0.0, "images_forwarded": 400}
    waited = {"extract_seconds": 0.0, "cache_wait_seconds": 9.0, "images_forwarded": 0}
    results = [_result(0, SEED0), _result(1, SEED1)]
    for result, extra in zip(results, (paid, waited)):
        result.cost.update(extra)  # total_seconds 10 and 11
    old = _result(0, SEED0, config={"strategy": "simplecil"}, digest="old")
    _references(tmp_path / "b")
    add(_files(tmp_path, *results, old), tmp_path / "b")
    rows = {r.strategy: r for r in aggregate(load_board(tmp_path / "b", "synthetic"))}
    assert rows["nmc"].train_eval_seconds == pytest.approx(((10 - 6) + (11 - 9)) / 2)
    assert rows["nmc"].extracted_seeds == [0] and rows["nmc"].extract_seconds == 6.0
    assert rows["simplecil"].train_eval_seconds is None
    build(tmp_path / "b")
    main = _tables((tmp_path / "b" / "synthetic.md").read_text())[0]
    cells = {row[0]: dict(zip(main[0], row)) for row in main[1:]}
    assert cells["nmc"]["train+eval s / run"] == "3.0"
    assert cells["nmc"]["features extracted"] == "6.0 s (seed 0)"
    assert cells["simplecil"]["train+eval s / run"] == "not recorded"
    assert cells["simplecil"]["features extracted"] == "no (cache)"


def test_a_trained_row_that_did_not_train_is_flagged(tmp_path: Path):
    """Loss at ln 2 on a 2-class first task, or a matrix equal to SimpleCIL's: flagged."""
    at_chance = _result(
        0, SEED1, config={"strategy": "adam"}, digest="chance",
        strategy_report={"first_session_losses": [0.6935, 0.6920]},
    )  # fmt: skip
    at_chance.stream["experience_classes"] = [[0, 1], [2, 3]]
    at_chance.cost["trainable_parameters"] = 1000
    copy = _result(0, SEED0, config={"strategy": "slca"}, digest="copy")
    copy.cost["trainable_parameters"] = 1000
    baseline = _result(0, SEED0, config={"strategy": "simplecil"}, digest="base")
    learned = _result(1, SEED1, config={"strategy": "slca"}, digest="ok")
    learned.cost["trainable_parameters"] = 1000
    learned.strategy_report = {"first_session_losses": [0.69, 0.2]}
    from cilbench.boards.training_checks import did_not_train

    board = [at_chance, copy, baseline, learned]
    _references(tmp_path / "b")
    assert did_not_train(at_chance, board) == [
        "training loss never fell below chance (ln 2 = 0.693)"
    ]
    at_chance.strategy_report = {"epoch_losses": {"0": [0.738, 0.722]}}  # above chance throughout
    assert did_not_train(at_chance, board) == [
        "training loss never fell below chance (ln 2 = 0.693)"
    ]
    at_chance.strategy_report["loss_classes"] = 4  # the loss spans 4 logits: chance is ln 4
    assert did_not_train(at_chance, board) == []
    at_chance.strategy_report["epoch_losses"] = {"0": [1.40, 1.39]}
    assert did_not_train(at_chance, board) == [
        "training loss never fell below chance (ln 4 = 1.386)"
    ]
    assert did_not_train(copy, board) == ["accuracy matrix equals simplecil's (seed 0)"]
    assert did_not_train(learned, board) == [] and did_not_train(baseline, board) == []
    add(_files(tmp_path, copy, baseline, learned), tmp_path / "b")
    build(tmp_path / "b")
    main = _tables((tmp_path / "b" / "synthetic.md").read_text())[0]
    names = [row[0] for row in main[1:]]
    assert "slca (did not train)" in names and "simplecil" in names
    result = CliRunner().invoke(
        app,
        ["leaderboard", "add", *map(str, _files(tmp_path, copy)), "--root", str(tmp_path / "b")],
    )
    assert result.exit_code == 0 and "did not train" in result.output


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ({"first_session_losses": [0.69, 0.5]}, [0.69, 0.5]),  # ADAM: the first session only
        ({"epoch_losses": {"0": [0.69, 0.6], "1": [0.1]}}, [0.69, 0.6]),  # EpochLosses
        ({"adapter_losses": [[0.7, 0.4], [0.3]]}, [0.7, 0.4]),  # one list per experience
        ({"losses": [[0.5], [0.1]], "merge_similarities": [[0.9]]}, [0.5]),  # DUCT
        ({"epoch_losses": {"0.first": [0.6, 0.4], "1.boosting": [1.7]}}, [0.6, 0.4]),  # FOSTER
        ({"epoch_losses": {"1": [0.2]}}, []),  # a report without the first experience
    ],
)
def test_first_session_losses_read_every_report_shape(report, expected):
    from cilbench.boards.training_checks import first_session_losses

    result = _result(0, SEED0, strategy_report=report)
    assert first_session_losses(result) == expected


def test_prompt_methods_report_the_cross_entropy_not_the_objective_with_its_pull_term():
    """DualPrompt's objective (cross-entropy minus its key pull) goes negative; the reported
    losses are the cross-entropy alone, so they compare with ln(classes)."""
    from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone

    stream = synthetic_stream()
    strategy = make_strategy("dualprompt", tiny_backbone(), stream)
    strategy.config = replace(strategy.config, pull_coeff=100.0)
    strategy.train_experience(stream.experiences[0])
    losses = strategy.report()["epoch_losses"]["0"]
    assert losses and all(loss > 0 for loss in losses)


def test_epoch_losses_survive_a_checkpoint():
    from cilbench.learn.training import EpochLosses

    losses = EpochLosses()
    losses.record(0, [0.7, 0.5, 0.25])
    losses.record(2, [0.125])
    restored = EpochLosses()
    restored.load_state_dict(losses.state_dict())
    assert restored.report() == {"0": [0.7, 0.5, 0.25], "2": [0.125]}
    restored.load_state_dict({})  # a checkpoint written before losses were kept
    assert restored.report() == {}


def _trained(seed: int, matrix: list[list[float | None]], **changes: Any) -> RunResult:
    result = _result(seed, matrix, config={"strategy": "slca"}, digest=f"t{seed}", **changes)
    result.cost["trainable_parameters"] = 1000
    result.environment = {"cpu_capability": "AVX512", "torch_threads": 2, "torch": "2.14.1"}
    return result


def test_a_frozen_replay_must_be_exact_and_a_trained_one_within_the_seed_spread():
    from cilbench.boards.replay import compare_runs

    board = [_trained(0, SEED0), _trained(1, SEED1), _trained(2, [[85.0, None], [65.0, 50.0]])]
    # final sample-weighted accuracies 45, 62.5, 53.75: mean 53.75, std 8.75
    replay = _trained(0, [[80.0, None], [58.0, 41.0]])  # 45.25
    replay.environment = {"cpu_capability": "AVX2", "torch_threads": 2, "torch": "2.14.1"}
    same, message = compare_runs(board[0], replay, board)
    assert same, message
    assert "within the seed spread of the stored seeds 0, 1, 2" in message
    assert "environment: cpu_capability: AVX512 -> AVX2" in message
    far = _trained(0, [[10.0, None], [10.0, 10.0]])
    same, message = compare_runs(board[0], far, board)
    assert not same and "outside the seed spread" in message
    alone, message = compare_runs(board[0], replay)
    assert not alone and "not on a board" in message
    frozen = _result(0, SEED0)
    same, message = compare_runs(frozen, _result(0, [[80.0, None], [58.0, 41.0]]), [frozen])
    assert not same and "a frozen row must replay exactly" in message
    same, message = compare_runs(frozen, _result(0, SEED0, environment={"cilbench": "0.1.0"}))
    assert same and "not recorded in the stored result: cilbench" in message


@pytest.mark.slow
def test_run_from_a_board_on_another_machine_compares_with_the_seed_spread(tmp_path: Path):
    """A trained row's stored file from 'another machine' (other CPU, instruction set, threads)
    replays within its row's seed spread; the replay names what differs."""
    runner = CliRunner()
    args = ["run", "-s", "finetune", "--stream", "synthetic", "--out", str(tmp_path / "a")]
    assert runner.invoke(app, [*args, "--json"]).exit_code == 0
    (path,) = (tmp_path / "a").rglob("result.json")
    board = tmp_path / "boards" / "synthetic"
    board.mkdir(parents=True)
    stored = load_result(path)
    stored.environment.update(cpu_model="Other CPU", cpu_capability="AVX2", torch_threads=1)
    final = stored.accuracy_matrix[-1]
    final[-1] = final[-1] - 1.0 if final[-1] >= 1.0 else 1.0  # this machine's floats differ
    save_result(stored, board / "seed0.json")
    for seed, shift in ((1, 3.0), (2, -3.0)):  # the row's other seeds spread around it
        other = load_result(board / "seed0.json")
        other.config["seed"], other.run_id = seed, other.run_id.replace("seed0", f"seed{seed}")
        other.accuracy_matrix[-1] = [min(100.0, max(0.0, a + shift)) for a in final]
        save_result(other, board / f"seed{seed}.json")
    replay = ["run", "--from", str(board / "seed0.json"), "--out", str(tmp_path / "b"), "--json"]
    result = runner.invoke(app, replay)
    assert result.exit_code == 0, result.output
    assert "within the seed spread of the stored seeds 0, 1, 2" in result.stderr
    assert "cpu_capability: AVX2 -> " in result.stderr
    assert "cpu_model: Other CPU -> " in result.stderr
    print(result.stderr)


def test_rows_written_before_a_result_change_are_marked_until_rerun() -> None:
    from cilbench.boards.stale_rows import RESULT_CHANGES, written_before

    stored = {load_result(p).run_id: load_result(p) for p in REPO_BOARDS.glob("*/*.json")}
    change = RESULT_CHANGES[0]
    assert change.run_ids <= set(stored), "a listed run id is not on the board"
    result = stored[min(change.run_ids)]
    result.environment.pop("git_commit", None)  # as every file written before the change
    assert written_before(result) == [f"written before {change.commit} ({change.what}): rerun"]
    result.environment["git_commit"] = "0" * 40  # what a rerun records
    assert written_before(result) == []
    still_stale = [r for i, r in stored.items() if i in change.run_ids and written_before(r)]
    board = (REPO_BOARDS / "split-fashion-mnist-mini.md").read_text()
    assert ("written before a change: rerun" in board) == bool(still_stale)
