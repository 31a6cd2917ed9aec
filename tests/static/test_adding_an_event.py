"""docs/adding-an-event.md cannot go stale: its ``diff`` blocks are the change it describes.

The working tree (tracked files, and untracked ones not ignored) is copied into a temporary
git repository; every ``diff`` block of the guide is applied there with ``git apply``, in
order; then the commands of its ``sh check`` block run in the copy, and those of its
``sh check-integration`` block in the integration tier. A ``make`` target runs as the
``$(PY)`` lines of its recipe in the Makefile, with this interpreter: ``make`` itself would
first sync the project's .venv. The copy's sources come first on ``PYTHONPATH``, ahead of the
workspace packages the .venv installed in editable mode from this checkout.

The guide's tables are held to the copy: "By hand" names exactly the files its blocks change,
as many as the "**N files by hand**" it states, and "Generated" exactly the files its checks
wrote besides.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "adding-an-event.md"
# Set in the copy, whose own copy of this module must not copy the tree again.
IN_COPY = "ADDING_AN_EVENT_COPY"

if os.environ.get(IN_COPY):
    pytest.skip("run by the guide's test in its copy", allow_module_level=True)

FENCE = re.compile(r"^```(?P<info>[^`\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PATCHED = re.compile(r"^(?:\+\+\+ b/|--- a/)(?P<path>\S+)", re.MULTILINE)
STATED = re.compile(r"\*\*(?P<count>\d+) files by hand\*\*")
PATH_CELL = re.compile(r"^`(?P<path>[^`\s]+/[^`\s]+)`$")
HEADING = re.compile(r"^(?P<level>#+)\s+(?P<title>.+?)\s*$", re.MULTILINE)
LAST_OUTPUT = 6_000  # characters of a failing command's output shown


@dataclass(frozen=True)
class Block:
    info: str  # the fence's info string: "diff", "sh check", ...
    body: str
    line: int  # of the opening fence, in the guide

    @property
    def where(self) -> str:
        return f"{GUIDE.relative_to(REPO)}:{self.line}"


def blocks(text: str, info: str) -> list[Block]:
    return [
        Block(m["info"].strip(), m["body"], text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
        if m["info"].strip() == info
    ]


def patched_paths(patches: list[Block]) -> set[str]:
    return {m["path"] for block in patches for m in PATCHED.finditer(block.body)}


def section(text: str, title: str) -> str:
    """The text under the heading ``title``, up to the next heading of its level or above
    (code blocks left out: a `#` line in one is no heading)."""
    text = FENCE.sub("", text)
    headings = list(HEADING.finditer(text))
    for i, heading in enumerate(headings):
        if heading["title"] == title:
            level = len(heading["level"])
            end = next(
                (h.start() for h in headings[i + 1 :] if len(h["level"]) <= level), len(text)
            )
            return text[heading.end() : end]
    raise AssertionError(f"{GUIDE.name} has no heading {title!r}")


def table_paths(text: str) -> set[str]:
    """The file paths the table rows in ``text`` name: a cell that is one `path/with/slash`."""
    found = set()
    for line in text.splitlines():
        if line.startswith("|"):
            for cell in line.strip("|").split("|"):
                match = PATH_CELL.match(cell.strip())
                if match:
                    found.add(match["path"])
                    break
    return found


def recipe(target: str) -> list[list[str]]:
    """The commands of a Makefile target, each a ``$(PY)`` line run with this interpreter."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", makefile, re.MULTILINE)
    assert match, f"the guide runs `make {target}`: the Makefile has no such target"
    commands = []
    for line in match[1].splitlines():
        command = line.strip().removeprefix("@")
        assert command.startswith("$(PY) "), (
            f"`make {target}` runs {command!r}: this test can run only the $(PY) lines of a recipe"
        )
        commands.append([sys.executable, *shlex.split(command.removeprefix("$(PY) "))])
    return commands


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """Each command of a check block, as the guide shows it and as run in the copy."""
    found: list[tuple[str, list[str]]] = []
    for line in block.body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "make":
            found += [(f"make {target}", argv) for target in words[1:] for argv in recipe(target)]
        elif words[0] == ".venv/bin/python":
            found.append((" ".join(line.split()), [sys.executable, *words[1:]]))
        else:
            raise AssertionError(
                f"{block.where}: a check block holds `make` and `.venv/bin/python` lines: {line}"
            )
    return found


def the_block(text: str, info: str) -> Block:
    found = blocks(text, info)
    assert len(found) == 1, f"{GUIDE.name} needs one ```{info} block; it has {len(found)}"
    return found[0]


def tail(output: str) -> str:
    return output if len(output) <= LAST_OUTPUT else "...\n" + output[-LAST_OUTPUT:]


def git(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    identity = {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "adding-an-event"), ("EMAIL", "guide@example.invalid"))
    }
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **identity},
    )


@dataclass
class Copy:
    """The working tree, copied and committed, with the guide's patches applied."""

    root: Path
    by_hand: set[str]

    @property
    def env(self) -> dict[str, str]:
        sources = [self.root / "shared" / "src", *sorted((self.root / "services").glob("*/src"))]
        path = [str(p) for p in (*sources, self.root)]
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        return {**os.environ, IN_COPY: "1", "PYTHONPATH": os.pathsep.join(path)}

    def run(self, shown: str, argv: list[str]) -> None:
        done = subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            pytest.fail(
                f"with the guide's change applied, `{shown}` fails (exit {done.returncode}) in "
                f"{self.root}:\n{tail(done.stdout + done.stderr)}",
                pytrace=False,
            )

    def changed(self) -> set[str]:
        status = git("status", "--porcelain", "-z", "--untracked-files=all", cwd=self.root)
        assert status.returncode == 0, status.stderr
        return {entry[3:] for entry in status.stdout.split("\0") if entry}


def copy_working_tree(destination: Path) -> None:
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO)
    assert listed.returncode == 0, f"this test copies the git working tree: {listed.stderr}"
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_symlink() or source.is_file():  # not a file deleted and not yet committed
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Copy:
    root = tmp_path_factory.mktemp("adding-an-event")
    copy_working_tree(root)
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "the working tree")):
        done = git(*args, cwd=root)
        assert done.returncode == 0, f"git {' '.join(args)} in the copy: {done.stderr}"
    patches = blocks(GUIDE.read_text(), "diff")
    for block in patches:
        applied = git("apply", "--recount", "-", cwd=root, stdin=block.body)
        if applied.returncode != 0:
            paths = ", ".join(sorted(patched_paths([block])))
            pytest.fail(
                f"{block.where}: the diff block for {paths} does not apply to the working tree:"
                f"\n{applied.stderr}",
                pytrace=False,
            )
    by_hand = Copy(root, set()).changed()
    assert by_hand == patched_paths(patches), "the blocks change files they do not name"
    return Copy(root, by_hand)


def test_the_guide_names_the_files_its_blocks_change_and_states_their_count() -> None:
    text = GUIDE.read_text()
    patched = patched_paths(blocks(text, "diff"))
    assert patched, f"{GUIDE.name} has no ```diff block"
    listed = table_paths(section(text, "By hand"))
    assert listed == patched, (
        f"the table 'By hand' lists {sorted(listed - patched)} that no block changes, "
        f"and not {sorted(patched - listed)} that a block changes"
    )
    stated = [int(m["count"]) for m in STATED.finditer(text)]
    assert stated == [len(patched)], (
        f"the blocks change {len(patched)} files; the guide states {stated} "
        "(as '**N files by hand**', once)"
    )


def test_the_check_blocks_run_only_what_the_test_can_run_in_a_copy() -> None:
    text = GUIDE.read_text()
    for info in ("sh check", "sh check-integration"):
        assert commands(the_block(text, info))


def test_the_guide_s_change_applies_and_passes_the_checks_it_names(copy: Copy) -> None:
    text = GUIDE.read_text()
    for shown, argv in commands(the_block(text, "sh check")):
        copy.run(shown, argv)
    generated = copy.changed() - copy.by_hand
    listed = table_paths(section(text, "Generated"))
    assert generated == listed, (
        f"the checks wrote {sorted(generated)}; the table 'Generated' lists {sorted(listed)}"
    )


@pytest.mark.integration
def test_the_guide_s_change_passes_its_checks_against_postgresql(copy: Copy) -> None:
    for shown, argv in commands(the_block(GUIDE.read_text(), "sh check-integration")):
        copy.run(shown, argv)
