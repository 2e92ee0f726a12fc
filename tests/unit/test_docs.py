"""
The repository stands alone: every attack-catalogue ID that code, tests,
benchmarks or docs cite is defined in ``docs/`` (``docs/threat-model.rst``),
no file points at design or reference documents that are not in the
repository, and the test files the docs name exist.

To list undefined IDs with where they are cited::

    .venv/bin/python -m tests.unit.test_docs
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: Where catalogue IDs are looked for.
SCANNED = (
    "mailmcp",
    "tests",
    "benchmarks",
    "twisted",
    "templates",
    "contrib",
    "docs",
    "README.rst",
)

#: A catalogue ID: a family prefix and a number (``OA-03``, ``P-10``,
#: ``S3-05``, ``MCP-14``), or a tool-family letter and number (``TL-U1``).
#: Three-digit numbers are not IDs (the ``P-256`` curve).
CATALOGUE_ID = re.compile(
    r"(?<![\w-])(?:(?:OA|OT|TK|MCP|MM|IM|SM|S3|ST|SC|LG|P|S)-\d{1,2}|TL-[A-Z]\d{1,2})(?![\w-])"
)

#: A definition in docs/: the ID alone on a line, as a definition-list term.
DEFINITION = re.compile(r"^``([A-Z0-9]+-[A-Z0-9]+)``\s*$", re.MULTILINE)

#: Documents that live outside the repository (spelled in pieces so that
#: this file does not match itself).
OUTSIDE = re.compile(
    "|".join(
        [
            r"\bDESIGN" + r"(?:\.md)?\s*§",
            r"\bDESIGN" + r"\.md\b",
            r"\b(?:security|stack|protocol|style|peers|test-services|original-README)" + r"\.md\b",
            r"\.\./" + r"shared\b",
            r"\breference" + r"/[\w.-]+\.md\b",
        ]
    )
)


def _repository_files() -> list[Path]:
    """Tracked and new (not ignored) files; every file when git is unavailable."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8")
        files = [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", "build", "dist", "test-artifacts"}
        files = [
            p
            for p in ROOT.rglob("*")
            if not any(
                part in skip or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts
            )
        ]
    return sorted(p for p in files if p.is_file())


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary (images) or unreadable: nothing to cite


def _scanned(path: Path) -> bool:
    return path.relative_to(ROOT).parts[0] in SCANNED


def citations() -> Iterator[tuple[str, str]]:
    """Every (catalogue ID, ``path:line``) in the scanned parts of the repository."""
    for path in _repository_files():
        if not _scanned(path):
            continue
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in CATALOGUE_ID.finditer(line):
                yield match.group(0), f"{path.relative_to(ROOT)}:{number}"


def definitions() -> dict[str, list[str]]:
    """Every ID defined in docs/, with the files that define it."""
    found: dict[str, list[str]] = {}
    for path in sorted(DOCS.glob("**/*.rst")):
        for match in DEFINITION.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match.group(1), []).append(str(path.relative_to(ROOT)))
    return found


def undefined() -> dict[str, list[str]]:
    """Cited IDs without a definition in docs/, with where each is cited."""
    defined = definitions()
    missing: dict[str, list[str]] = {}
    for ident, where in citations():
        if ident not in defined:
            missing.setdefault(ident, []).append(where)
    return missing


def test_every_cited_catalogue_id_is_defined_in_docs() -> None:
    """Each catalogue ID cited in code, tests, benchmarks or docs has an entry in docs/."""
    missing = undefined()
    assert not missing, (
        "catalogue IDs cited but not defined in docs/threat-model.rst "
        "(add a ``ID`` entry: the attack, what mailmcp does, the test that proves it):\n"
        + "\n".join(
            f"  {ident}: {', '.join(where[:5])}" for ident, where in sorted(missing.items())
        )
    )


def test_the_scan_finds_the_catalogue() -> None:
    """The scan is not vacuous: it finds IDs of every family where they are known to be cited."""
    cited = {ident for ident, _ in citations()}
    for ident in ("OA-03", "OT-04", "TK-01", "MCP-01", "TL-S1", "MM-01", "IM-05", "SM-10", "S3-05"):
        assert ident in cited, ident
    for ident in ("LG-01", "P-10", "S-15"):
        assert ident in cited, ident
    assert "P-256" not in cited  # an elliptic curve, not a catalogue entry


def test_each_id_is_defined_once() -> None:
    """No ID has two definitions (two meanings would make citations ambiguous)."""
    doubles = {ident: files for ident, files in definitions().items() if len(files) > 1}
    assert not doubles, doubles
    assert len(definitions()) >= 150


def test_catalogue_entries_name_their_tests() -> None:
    """Every entry of the attack catalogue (all families but the seed's S-xx) names a test file."""
    text = (DOCS / "threat-model.rst").read_text(encoding="utf-8")
    entries = re.split(r"(?m)^(?=``[A-Z0-9]+-[A-Z0-9]+``\s*$)", text)[1:]
    assert entries
    lacking = []
    for entry in entries:
        ident = entry.split("``", 2)[1]
        body = entry.split("\n\n", 1)[0]
        if not ident.startswith("S-") and "tests/" not in body:
            lacking.append(ident)
    assert not lacking, f"entries naming no test file: {lacking}"


def test_paths_named_in_docs_exist() -> None:
    """Every ``tests/…``, ``mailmcp/…`` or ``benchmarks/…`` file the docs name is there."""
    named = set()
    for path in [*sorted(DOCS.glob("**/*.rst")), ROOT / "README.rst"]:
        text = path.read_text(encoding="utf-8")
        named.update(re.findall(r"\b((?:tests|mailmcp|benchmarks)/[\w/.-]+\.(?:py|rst))\b", text))
    assert named
    gone = sorted(name for name in named if not (ROOT / name).is_file())
    assert not gone, f"docs name files that do not exist: {gone}"


def test_no_reference_to_documents_outside_the_repository() -> None:
    """No file cites design or reference documents that a clone of the repository does not have."""
    offenders = []
    for path in _repository_files():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, (
        "references to documents outside the repository (cite docs/architecture.rst or "
        "docs/threat-model.rst instead):\n" + "\n".join(offenders)
    )


def test_outside_reference_pattern() -> None:
    """The pattern catches the spellings that were used, and spares ordinary words."""
    bad = [
        "DESIGN " + "§6",
        "(DESIGN" + ".md §3.5, §6)",
        "security" + ".md P-01",
        "see reference" + "/stack" + ".md",
        "../" + "shared/DESIGN",
    ]
    for line in bad:
        assert OUTSIDE.search(line), line
    for line in ["By design mailmcp makes no outbound fetch", "docs/threat-model.rst, P-01"]:
        assert not OUTSIDE.search(line), line


if __name__ == "__main__":
    missing = undefined()
    for ident, where in sorted(missing.items()):
        print(f"{ident}: {', '.join(where)}")
    sys.exit(1 if missing else 0)
