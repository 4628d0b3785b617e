"""The README is executable: every ```sh block runs, in order, against the stack the run command
starts, and a README change that breaks a reader breaks this test.

How it runs. ``python -m devstack`` (what ``./scripts/run`` runs) starts on free ports with a data
dir and env file of its own. The blocks run in one bash session (variables such as ``H`` carry
from block to block, as in a reader's terminal) inside a scratch directory laid out like the repo
root the README is read from: ``.hub/dev.env`` is the stack's env file, ``.venv`` and ``samples``
are links to the repo's. The environment holds no HUB_* settings of the test's own.

What it checks. Each command (a line, or several joined by quotes, ``\\`` or a here-document) must
exit 0, and where the README documents what it prints with a ``# -> SHAPE`` comment (after the
command on its line, or on a line of its own right after it), that output must show the shape:
SHAPE's pieces between ``...`` must appear in the command's output, in that order, with
whitespace ignored (``# -> {"key": "x", "size": 1}`` matches JSON printed with indentation).
``curl -s`` exits 0 on an HTTP error, so its checks are the shapes.

Bounds. A ``--follow``/``-f`` log command or a ``follow=true`` stream with no ``--timeout`` or
``max_s`` of its own runs under ``timeout FOLLOW_S`` (its exit 124 counts as success); every
command is bounded by the session's deadline. A follow command with documented shapes is ended
(SIGTERM to its process group, which counts as success) as soon as all of them have appeared:
they are what it runs for, and waiting out its own bound (40 s in the quickstart, sized for a
first upload on a cold stack) would prove only that ``--timeout`` ends a follow with exit 0,
which tests/test_cli_usability.py checks on its own.

Markers. ``<!-- readme-test: skip (why) -->`` on the line before a block: it is not run (the
README says why, in the marker). Blocks that are not ``sh`` (``python`` examples) are not run.

Which documents: ``README.md``. ``bench/README.md`` is for engineers: its blocks run benchmarks
for minutes each, on purpose, and are not a new user's first hour.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md"]
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^```(\S*)\s*$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
SHAPE = "# -> "
FOLLOW = re.compile(r"(--follow\b|\s-f\b|follow=true)")
BOUNDED = re.compile(r"(--timeout\b|max_s=)")
FOLLOW_S = 8
SESSION_S = 240


@dataclass
class Step:
    doc: str
    line: int  # 1-based, in the document
    text: str
    shapes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    lines: list[str]
    skip: str | None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown document, with the skip marker each carries."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not FENCE.match(lines[j]):
            j += 1
        before = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = SKIP.search(before)
        out.append(Block(path.name, start + 2, lang, lines[start + 1:j],
                         marker.group(1).strip(" ()") or "no reason given" if marker else None))
        i = j + 1
    return out


def _complete(text: str) -> bool:
    """True when ``text`` ends a shell command: quotes closed, no trailing backslash."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # No closing quotation / No escaped character
        return False
    return True


def steps(block: Block) -> list[Step]:
    """A block's commands, each with the shapes documented for it."""
    out: list[Step] = []
    pending: list[str] = []
    first = 0
    lines = block.lines
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            if stripped.startswith(SHAPE) and out:  # a shape on its own line: the command before it
                out[-1].shapes.append(stripped[len(SHAPE):])
            i += 1
            continue
        if not pending:
            first = i
        pending.append(line)
        doc = HEREDOC.search(line) if "<<" in line else None
        if doc:  # the body, verbatim, up to the terminator
            i += 1
            while i < len(lines) and lines[i].strip() != doc.group(2):
                pending.append(lines[i])
                i += 1
            if i < len(lines):
                pending.append(lines[i])
        text = "\n".join(pending)
        if doc or _complete(text):
            shapes = [part.split(SHAPE, 1)[1] for part in pending if SHAPE in part and not doc]
            out.append(Step(block.doc, block.line + first, text, shapes))
            pending = []
        i += 1
    assert not pending, f"{block.doc}:{block.line + first}: a command that never ends: {pending}"
    return out


def bounded(text: str) -> str:
    """A follow command without a bound of its own runs under ``timeout``; 124 is its success."""
    if FOLLOW.search(text) and not BOUNDED.search(text):  # (a newline ends the line's own comment)
        return f"{{ timeout -s INT {FOLLOW_S} {text.strip()}\n  __f=$?; [ $__f -eq 0 ] || [ $__f -eq 124 ]; }}"
    return text


def ended_when_shown(step: Step, text: str, shown: str) -> str:
    """``text`` (a follow command) in the background, its output to a file that ``shown`` (a
    command given the file and the shapes) is asked about every 0.25 s; once it says yes, the
    command's process group gets SIGTERM and its 143 counts as 0. Its output is printed after, so
    the step's own checks read it as usual."""
    if not step.shapes or not FOLLOW.search(step.text):
        return text
    shapes = " ".join(shlex.quote(s) for s in step.shapes)
    return "\n".join([
        '__o=$(mktemp); set -m; {', text.strip(), '} >"$__o" 2>&1 & __p=$!; set +m',
        f'while kill -0 $__p 2>/dev/null && ! {shown} "$__o" {shapes}; do sleep 0.25; done',
        ('if kill -0 $__p 2>/dev/null; then kill -TERM -- -$__p; wait $__p; __f=$?; [ $__f -eq 143 ] && __f=0;'
         ' else wait $__p; __f=$?; fi'),
        'cat "$__o"; rm -f "$__o"; [ $__f -eq 0 ]',
    ])


SHOWN_SCRIPT = """\
import re, sys
{source}
output = open(sys.argv[1], errors="replace").read()
sys.exit(0 if all(shape_shown(s, output) for s in sys.argv[2:]) else 1)
"""


def shape_checker(directory: Path) -> str:
    """The command :func:`ended_when_shown` asks (``shown.py`` in ``directory``): exit 0 when
    the file it is given shows every shape it is given (:func:`shape_shown`)."""
    checker = directory / "shown.py"
    checker.write_text(SHOWN_SCRIPT.format(source=inspect.getsource(shape_shown)))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(checker))}"


def shape_shown(shape: str, output: str) -> bool:
    squeeze = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    rest = squeeze(output)
    for piece in (squeeze(p) for p in re.split(r"\.\.\.|…", shape)):
        if not piece:
            continue
        at = rest.find(piece)
        if at < 0:
            return False
        rest = rest[at + len(piece):]
    return True


def script(all_steps: list[Step], shown: str = "false") -> str:
    """One bash session: each step, then a marker with its exit status; the first failure ends it.
    ``shown``: the shape check a follow command is ended by (see :func:`ended_when_shown`)."""
    parts = ["exec 2>&1", "set -o pipefail"]
    for n, step in enumerate(all_steps):
        parts.append(ended_when_shown(step, bounded(step.text), shown))
        parts.append(f'__rc=$?; printf "\\n@@readme-step {n} rc=%d@@\\n" "$__rc"; [ "$__rc" -eq 0 ] || exit 97')
    return "\n".join(parts) + "\n"


# -- the parser on its own (no servers) ---------------------------------------------------------------
def test_readme_parses_into_commands() -> None:
    found = [b for doc in DOCS for b in blocks(doc) if b.lang == "sh"]
    assert found, "no sh blocks"
    run = [b for b in found if b.skip is None]
    assert run and all(b.skip != "no reason given" for b in found), [b.line for b in found if b.skip]
    every = [s for b in run for s in steps(b)]
    texts = [s.text for s in every]
    assert any("python -m samples.demo" in t for t in texts), "the demo is part of the README test"
    assert any(t.startswith("mkdir -p thumbs && cat > thumbs/main.py <<'END'") and t.endswith("END") for t in texts)
    assert sum(bool(s.shapes) for s in every) >= 8, [s.where for s in every if s.shapes]


def test_steps_shapes_and_bounds() -> None:
    block = Block("x.md", 10, "sh", [
        "a=1   # -> one ... two",
        "curl -s x -d '{\"k\":",
        "  1}'",
        "# -> {\"k\": 1}",
        "cat > f <<'END'",
        "it's # -> not a shape",
        "END",
        "trigger-hub logs f -f   # follow",
    ], None)
    got = steps(block)
    assert [(s.line, s.shapes) for s in got] == [(10, ["one ... two"]), (11, ['{"k": 1}']), (14, []), (17, [])]
    assert bounded(got[3].text).startswith(f"{{ timeout -s INT {FOLLOW_S} trigger-hub logs f -f   # follow\n")
    assert bounded("trigger-hub logs f --follow --timeout 40") == "trigger-hub logs f --follow --timeout 40"
    assert shape_shown('{"key": "x", "size": 1}', '{\n  "key": "x",\n  "size": 1\n}')
    assert shape_shown("succeeded ... new upload", "x succeeded y\n   new upload z")
    assert not shape_shown("new upload ... succeeded", "x succeeded y\n   new upload z")


def test_a_follow_command_ends_once_its_shapes_have_shown(tmp_path: Path) -> None:
    """The early end of a follow command (ended_when_shown), on a stand-in that would run 60 s."""
    shown = shape_checker(tmp_path)
    follow = "sh -c 'echo start; sleep 0.3; echo new upload photos/cat.jpg; sleep 60; echo never' --follow"
    step = Step("x.md", 1, follow, ["new upload ... cat.jpg"])
    assert ended_when_shown(Step("x.md", 1, follow), follow, shown) == follow  # no shape: as it was
    done = subprocess.run(["bash", "-c", ended_when_shown(step, follow, shown) + "\necho rc=$?"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
    assert "new upload photos/cat.jpg" in done.stdout and "never" not in done.stdout, done
    assert done.stdout.rstrip().endswith("rc=0"), done


# -- the README against the real stack -----------------------------------------------------------------
@pytest.mark.timeout(420)
def test_readme_blocks_run_against_the_run_commands_stack(tmp_path: Path) -> None:
    runnable = [b for doc in DOCS for b in blocks(doc) if b.lang == "sh" and b.skip is None]
    all_steps = [s for b in runnable for s in steps(b)]
    ports = {name: free_port() for name in ("mongo", "kafka", "rgw", "mon", "hub", "fn")}
    data_dir, work = tmp_path / "stack", tmp_path / "reader"
    env_file = work / ".hub" / "dev.env"
    (work / ".hub").mkdir(parents=True)
    for name in (".venv", "samples"):  # the repo root as the README's reader has it
        (work / name).symlink_to(REPO / name)
    argv = [sys.executable, "-m", "devstack", "--data-dir", str(data_dir), "--env-file", str(env_file),
            *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port)))]
    stack_log = tmp_path / "devstack.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "MONGO_"))}
    with stack_log.open("w") as log:
        stack = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=clean)
    try:
        deadline = time.monotonic() + 240
        while not env_file.exists():
            if stack.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"python -m devstack did not come up:\n{stack_log.read_text()[-4000:]}")
            time.sleep(0.2)
        reader_env = {"PATH": clean.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8",
                      "TERM": "dumb"}
        shown = shape_checker(tmp_path)
        (work / "readme.sh").write_text(script(all_steps, shown))
        try:
            done = subprocess.run(["bash", "readme.sh"], cwd=work, env=reader_env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=SESSION_S)
            output, timed_out = done.stdout, False
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            timed_out = True
        (tmp_path / "readme.out").write_text(output)
        check(all_steps, output, timed_out, stack_log)
    finally:
        if stack.poll() is None:
            stack.send_signal(signal.SIGINT)
        try:
            stack.wait(90)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait()


def check(all_steps: list[Step], output: str, timed_out: bool, stack_log: Path) -> None:
    """Each step's output is what came between its marker and the one before; say which step
    failed, with its output and the hub's last lines."""
    marks = list(re.finditer(r"\n?@@readme-step (\d+) rc=(\d+)@@\n", output))
    start = 0
    for mark in marks:
        step = all_steps[int(mark.group(1))]
        out, start = output[start:mark.start()], mark.end()
        context = f"\n--- {step.where}:\n{step.text}\n--- its output:\n{out[-3000:]}"
        if mark.group(2) != "0":
            pytest.fail(f"{step.where} exited {mark.group(2)}{context}\n--- the stack:\n"
                        f"{stack_log.read_text()[-3000:]}")
        for shape in step.shapes:
            assert shape_shown(shape, out), f"{step.where}: the documented output {shape!r} did not appear{context}"
    if len(marks) < len(all_steps):
        step = all_steps[len(marks)]
        why = f"did not finish within the session's {SESSION_S} s" if timed_out else "did not run"
        pytest.fail(f"{step.where} {why}:\n{step.text}\n--- output since the last step:\n{output[start:][-3000:]}")
