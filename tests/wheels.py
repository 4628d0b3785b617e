"""Pytest plugin: a local wheelhouse, so the dependency tests install pinned wheels, not whatever
the live index serves today.

``wheelhouse`` (session): a directory filled once per session with ``pip download --no-deps
--only-binary=:all:`` of exact pins (:data:`PINS`), plus one hand-made source distribution whose
``setup.py`` would leave a mark if anything ever ran it. The download is the session's only
contact with the index (PyPI, or whatever the operator's pip configuration names); pip's own
cache makes later sessions cheap.

``local_wheels`` (per test): points pip at that directory and nothing else (``PIP_NO_INDEX``,
``PIP_FIND_LINKS``) through the environment the hub passes to pip (hub.catalog.deps reads
``os.environ`` at each pip run), restored after the test. A hub, in process or a CLI child,
resolves from it alone: ``six==99.0`` then says "releases: 1.16.0" because that is all there is.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# One pip run per group: pip refuses two versions of one name in one run, even with --no-deps.
PINS: list[list[str]] = [
    # six for the plain cases; requests 2.31.0 with its dependencies as of its release, plus an
    # urllib3 older than it accepts, for the conflict case
    ["six==1.16.0", "idna==3.7", "requests==2.31.0", "urllib3==1.20", "certifi==2024.2.2",
     "charset-normalizer==3.3.2"],
    ["idna==3.6"],
    ["idna==3.5"],
]
SDIST_ONLY = "trigger-hub-sdist-only"  # in the wheelhouse as a source distribution only


def _sdist(directory: Path, mark: Path) -> None:
    """``trigger_hub_sdist_only-1.0.tar.gz``: its setup.py writes ``mark`` when run."""
    root = "trigger_hub_sdist_only-1.0"
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {SDIST_ONLY}\nVersion: 1.0\n",
        "setup.py": textwrap.dedent(f"""
            open({str(mark)!r}, "w").write("setup.py ran")
            from setuptools import setup
            setup(name={SDIST_ONLY!r}, version="1.0")
        """),
    }
    with tarfile.open(directory / f"{root}.tar.gz", "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _download(directory: Path, pins: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(directory),
         "--progress-bar", "off", "--disable-pip-version-check", *pins],
        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheelhouse")
    with ThreadPoolExecutor(len(PINS)) as pool:
        runs = list(pool.map(lambda pins: _download(directory, pins), PINS))
    for pins, run in zip(PINS, runs):
        if run.returncode != 0:
            pytest.fail(f"pip download {' '.join(pins)} failed (the wheelhouse needs the package index "
                        f"once per session):\n{run.stdout[-3000:]}{run.stderr[-3000:]}", pytrace=False)
    _sdist(directory, sdist_mark(directory))
    return directory


def sdist_mark(wheelhouse: Path) -> Path:
    """Where the source distribution's setup.py would write if anything ran it."""
    return wheelhouse.parent / f"{wheelhouse.name}-setup-py-ran"


@pytest.fixture
def local_wheels(wheelhouse: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """pip (the hub's, and any CLI child's) sees the wheelhouse and no index, for this test."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    yield wheelhouse
    assert not sdist_mark(wheelhouse).exists(), "a source distribution's setup.py ran"
