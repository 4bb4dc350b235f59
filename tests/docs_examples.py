"""Collect the examples of README.md and docs/*.md, and the `fanout` command lines they show.

Every fenced ``bash`` or ``python`` block says how the tests treat it, in an HTML comment on
the line before its fence (a blank line between is allowed):

- ``<!-- docs-test: run [NAME=VALUE ...] -->``: run it (bash or python) in a scratch directory
  holding links to the repository's examples/, flows/, blocks/ and deployments/, against the
  session's Prefect server, with the variables given (``FANOUT_MODEL=test`` for offline runs);
  it must exit 0.
- ``<!-- docs-test: run output -->`` (may be combined with variables): the same, and the next
  ``text`` block after it is its expected stdout, compared exactly.
- ``<!-- docs-test: flags REASON -->``: not run (it needs a real key, a standing server, a
  cluster...); its ``fanout`` lines are flag-checked like every other.
- ``<!-- docs-test: skip REASON -->``: not run and no ``fanout`` line to check (installing,
  the two scripts themselves).

Separately, every ``fanout ...`` line of every code block and inline code span (``$ `` prompts
included) is parsed against the real parsers: the command must exist and accept every flag.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(run|flags|skip)\b(.*?)-->\s*$")


@dataclass
class Example:
    """One fenced block of a page."""

    page: str
    line: int
    language: str
    code: str
    mode: str | None = None  # run, flags, skip, or None (no marker)
    env: dict[str, str] = field(default_factory=dict)
    expected: str | None = None  # the stdout shown after it (run output)
    reason: str = ""

    @property
    def id(self) -> str:
        """``page:line``, the example's test id."""
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Example]:
    """Every fenced block of a page, with the marker before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    marker: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            match = _MARKER.match(lines[i])
            if match:
                marker = (match.group(1), match.group(2).strip())
            elif lines[i].strip():
                marker = None
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        indent = len(fence.group(1))
        code = "\n".join(line[indent:] for line in lines[i + 1 : end])
        example = Example(str(path.relative_to(ROOT)), i + 1, fence.group(2), code)
        if marker:
            example.mode, rest = marker
            if example.mode == "run":
                words = rest.split()
                example.env = dict(w.split("=", 1) for w in words if "=" in w)
                example.expected = "" if "output" in words else None
            else:
                example.reason = rest
        found.append(example)
        marker = None
        i = end + 1
    for before, after in zip(found, found[1:], strict=False):
        if before.expected == "" and after.language == "text":
            before.expected = after.code
    return found


def examples() -> list[Example]:
    """Every runnable (bash or python) block of every page."""
    return [b for page in pages() for b in blocks(page) if b.language in RUNNABLE]


def _joined(code: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out: list[str] = []
    carry = ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            carry += line.rstrip()[:-1] + " "
            continue
        out.append(carry + line)
        carry = ""
    return out


def fanout_lines() -> list[tuple[str, str]]:
    """Every ``fanout ...`` command line shown anywhere, as (where, line)."""
    found: list[tuple[str, str]] = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        name = str(page.relative_to(ROOT))
        for block in blocks(page):
            for line in _joined(block.code):
                command = re.sub(r"^\s*(\$\s+)?([A-Z_]+=\S+\s+)*", "", line)
                if _is_command(command):
                    found.append((f"{name}:{block.line}", command))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`(fanout [^`]+)`", prose):
            if _is_command(span):
                found.append((f"{name} (inline)", span))
    return found


def _is_command(text: str) -> bool:
    """A ``fanout`` command line, not one of its messages (``fanout map: ...``)."""
    return bool(re.match(r"fanout (?!\S*:(\s|$))\S", text))


def command_words(line: str) -> list[str]:
    """The words of one shell command line, up to a pipe, redirection or separator."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    try:
        for word in lexer:
            if word and set(word) <= set("|&;<>()"):
                break
            words.append(word)
    except ValueError:  # an unbalanced quote in a prose fragment: what was read so far
        pass
    return words


def option_strings(help_text: str) -> set[str]:
    """The option strings a parser's help lists (``-v``, ``--verbose``, ...)."""
    found: set[str] = set()
    for line in help_text.splitlines():
        if re.match(r"^ {2,4}-", line):
            head = re.split(r"\s{2,}", line.strip())[0]
            found.update(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", head))
    return found
