"""Published reference numbers (`leaderboards/reference.json`): schema, validation, audit checks.

Every entry names what it measures (strategy, stream, protocol options, backbone, strategy config),
its accuracy convention, where the number was read (`source`, a human description, and `url`, a
link to the paper table or the repository file at a commit) and how far it is trusted (`evidence`,
`verified`). `load_references` refuses an entry that lacks any of these. `shared_values` finds the
copy-paste error an audit looks for first: one source giving the same number for two different
protocols, which is allowed only when both entries say why in their note.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cilbench.core.errors import CilbenchError, did_you_mean

if TYPE_CHECKING:
    from cilbench.core.results import RunResult

CONVENTIONS = ("sample-weighted", "task-averaged")
"""How a final accuracy averages over seen classes: by test image, or by task then over tasks."""
EVIDENCE = {
    "LOG": True,
    "IMG": True,
    "README": True,
    "DER": True,
    "3P": False,
    "U": False,
    "approx": False,
}
"""Evidence tag -> whether it can support `verified: true`."""
SHARED_VALUE_NOTE = "same value"
"""Words both notes must contain when one source gives one number for two protocols on purpose."""


class ReferenceFileError(CilbenchError):
    """A reference entry that is incomplete or inconsistent."""


@dataclass(frozen=True)
class Reference:
    """A published number: what it measures, where it comes from, how far it is trusted."""

    strategy: str
    stream: str
    protocol: dict[str, Any]
    backbone: str
    final_accuracy: float
    convention: str
    source: str
    url: str
    """Link to the paper table (arXiv abs/HTML with the table named in `source`) or to the
    repository file at a commit."""
    verified: bool
    evidence: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    final_std: float | None = None
    average_accuracy: float | None = None
    forgetting: float | None = None
    forgetting_definition: str | None = None
    seeds: str = ""
    note: str = ""

    def matches(self, result: RunResult) -> bool:
        """Same strategy (and config keys it names), stream, protocol options and backbone tag."""
        config = result.config
        options = config.get("stream_options", {})
        strategy_config = config.get("strategy_config", {})
        return (
            self.strategy == config["strategy"]
            and self.stream == result.stream["name"]
            and self.backbone == config["backbone"]
            and all(options.get(k) == v for k, v in self.protocol.items())
            and all(strategy_config.get(k) == v for k, v in self.config.items())
        )

    @property
    def document(self) -> str:
        """The paper or repository `url` points into (see `source_document`)."""
        return source_document(self.url)

    def measures(self) -> str:
        """What the number measures, as one comparable string."""
        return json.dumps(
            [self.stream, self.protocol, self.backbone, self.config, self.convention],
            sort_keys=True,
        )


def source_document(url: str) -> str:
    """The document behind a link: `github.com/<owner>/<repo>`, `arxiv:<id>` (any version or
    view) or host + path otherwise. Two files of one repository are one source."""
    parsed = urlparse(url)
    host = parsed.netloc.lower().removeprefix("www.")
    parts = [p for p in parsed.path.split("/") if p]
    if host == "github.com" and len(parts) >= 2:
        return f"github.com/{parts[0]}/{parts[1]}".lower()
    if host.endswith("arxiv.org") and len(parts) >= 2:
        return "arxiv:" + re.sub(r"v\d+$", "", parts[1])
    return host + parsed.path


def validate_entry(entry: dict[str, Any], where: str) -> Reference:
    """One `reference.json` object as a Reference; a ReferenceFileError names the bad field."""
    fields = {f.name: f for f in dataclasses.fields(Reference)}
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        hint = did_you_mean(unknown[0], fields)
        raise ReferenceFileError(f"{where}: unknown field {unknown[0]!r}.{hint}")
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if entry.get(name) in (None, "")]
    if missing:
        raise ReferenceFileError(
            f"{where}: missing {', '.join(missing)}. Every published number needs a source and "
            "a url (the paper table or the repository file at a commit)."
        )
    reference = Reference(**entry)
    if reference.convention not in CONVENTIONS:
        hint = did_you_mean(reference.convention, CONVENTIONS)
        raise ReferenceFileError(
            f"{where}: convention must be one of {', '.join(CONVENTIONS)}; got "
            f"{reference.convention!r}.{hint}"
        )
    if reference.evidence not in EVIDENCE:
        hint = did_you_mean(reference.evidence, EVIDENCE)
        raise ReferenceFileError(
            f"{where}: evidence must be one of {', '.join(EVIDENCE)}; got "
            f"{reference.evidence!r}.{hint}"
        )
    if reference.verified and not EVIDENCE[reference.evidence]:
        raise ReferenceFileError(
            f"{where}: verified is true but evidence {reference.evidence!r} cannot verify a "
            f"number (only {', '.join(k for k, v in EVIDENCE.items() if v)} can)."
        )
    if urlparse(reference.url).scheme != "https" or not urlparse(reference.url).netloc:
        raise ReferenceFileError(f"{where}: url must be an https link; got {reference.url!r}.")
    if not 0.0 <= reference.final_accuracy <= 100.0:
        raise ReferenceFileError(
            f"{where}: final_accuracy must be a percentage in [0, 100]; got "
            f"{reference.final_accuracy!r}."
        )
    return reference


def load_references(path: Path) -> list[Reference]:
    """The published numbers in `reference.json`, each validated (see `validate_entry`)."""
    try:
        entries = json.loads(path.read_text())["references"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ReferenceFileError(f"Cannot read references {path}: {error}") from error
    return [
        validate_entry(entry, f"{path} entry {i} ({entry.get('strategy')}, {entry.get('stream')})")
        for i, entry in enumerate(entries)
    ]


def shared_values(references: Sequence[Reference]) -> list[tuple[Reference, Reference]]:
    """Pairs from one source document with the same final accuracy but a different measurement
    (stream, protocol, backbone, config or convention), unless both notes contain
    SHARED_VALUE_NOTE. Such a pair is usually a number copied into the wrong row."""
    suspicious = []
    for i, first in enumerate(references):
        for second in references[i + 1 :]:
            if (
                first.final_accuracy == second.final_accuracy
                and first.document == second.document
                and first.measures() != second.measures()
                and not (SHARED_VALUE_NOTE in first.note and SHARED_VALUE_NOTE in second.note)
            ):
                suspicious.append((first, second))
    return suspicious
