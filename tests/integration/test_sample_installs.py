"""Each sample installs in a fresh virtualenv from its own requirements.txt, as its README says.

cloudtasks-deferred is not on a package index, so each sample's ``requirements.txt``
installs it from the repository (``../..[extras]``), and a copy of a sample from a
wheel built from it. The tests lay each sample out as its Dockerfile copies it (the
library at ``/src``, the sample at ``/src/samples/NAME``: a clone's layout too), run
the shell lines of its README's "Install" section there, and check that:

* the library came from the repository, not from an index: while pip runs, a
  recording index on loopback is one of pip's indexes (it answers 404 and notes each
  project asked for: the dependencies, never cloudtasks-deferred), and a planted
  ``cloudtasks_deferred-99.0.0`` wheel among pip's find-links is not taken;
* the sample's code imports in that virtualenv, and the command line runs.

Dependencies come from the indexes pip is configured with, through pip's own cache.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.run_cli import ROOT, clean_env

pytestmark = pytest.mark.integration

SAMPLES = ("django", "flask", "functions", "wsgi")
COPIED = "wsgi"  # the sample copied out of the repository
VERSION = "0.1.0"
POISON = "99.0.0"
SKIPPED = {"__pycache__", ".venv", "wheels", "build"}  # the Dockerfile.dockerignore


class RecordingIndex:
    """A package index on 127.0.0.1 that has nothing and notes every project asked for."""

    def __init__(self) -> None:
        asked: list[str] = []
        self.asked = asked

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                match = re.fullmatch(r"/simple/([^/]+)/?", self.path)
                if match:
                    asked.append(match[1])
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def planted_wheel(directory: Path) -> Path:
    """A ``cloudtasks_deferred-99.0.0`` wheel: what a squatter could publish."""
    name = f"cloudtasks_deferred-{POISON}"
    files = {
        "cloudtasks_deferred/__init__.py": b"raise ImportError('the planted wheel')\n",
        f"{name}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: cloudtasks-deferred\nVersion: {POISON}\n"
        ).encode(),
        f"{name}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{path},sha256="
        + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        + f",{len(data)}"
        for path, data in files.items()
    ]
    files[f"{name}.dist-info/RECORD"] = (
        "\n".join([*record, f"{name}.dist-info/RECORD,,"]) + "\n"
    ).encode()
    wheel = directory / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def configured(key: str) -> list[str]:
    """The values pip is configured with for ``key`` (config files and environment)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    values = []
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        if name.rsplit(".", 1)[-1] == key:
            values += value.strip("'\"").split()
    return list(dict.fromkeys(values))


@dataclasses.dataclass
class Install:
    """A folder to install in, the environment pip runs in, and what pip asked the index."""

    folder: Path
    env: dict[str, str]
    index: RecordingIndex
    source: str  # the URL the library must have come from
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def bin(self) -> Path:
        """The virtualenv's programs: the sample's ``.venv``, else the activated one's."""
        own = self.folder / ".venv" / "bin"
        return own if own.exists() else Path(self.env["PATH"].split(":", 1)[0])


def environment(directory: Path, index: RecordingIndex) -> dict[str, str]:
    """pip's own indexes plus ``index``, its find-links plus a planted wheel, and
    ``python3`` this interpreter."""
    planted = directory / "planted"
    planted.mkdir()
    planted_wheel(planted)
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    return clean_env(
        PATH=f"{bin_dir}:/usr/bin:/bin",
        PIP_EXTRA_INDEX_URL=" ".join([*configured("extra-index-url"), index.url]),
        PIP_FIND_LINKS=" ".join([*configured("find-links"), str(planted)]),
        PIP_NO_COMPILE="1",  # no bytecode: faster, and nothing here runs twice
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )


def run_readme_install(install: Install, readme: Path) -> Install:
    """Runs the README's install lines in the install's folder, noting what fails."""
    for command in install_commands(readme):
        result = sh(command, install.folder, install.env)
        if result.returncode != 0:
            install.problems.append(f"{command}:\n{result.stdout}\n{result.stderr}")
            break
    return install


@pytest.fixture(scope="module")
def installs(
    tmp_path_factory: pytest.TempPathFactory, wheel: Path
) -> Iterator[dict[str, concurrent.futures.Future[Install]]]:
    """Every sample installed as its README says, and a copy of one from the wheel, in
    parallel (pip spends much of its time waiting on files and the network)."""
    started: dict[str, concurrent.futures.Future[Install]] = {}
    indexes = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        for name in [*SAMPLES, "copy", "readme"]:
            index = RecordingIndex()
            indexes.append(index)
            directory = tmp_path_factory.mktemp(f"install-{name}")
            env = environment(directory, index)
            if name == "readme":
                folder = laid_out_as_the_dockerfile_copies("wsgi", directory / "clone") / "../.."
                folder = folder.resolve()
                env["PATH"] = f"{directory / 'venv' / 'bin'}:{env['PATH']}"  # as if activated
                source = (folder / "dist" / wheel.name).as_uri()
                started[name] = pool.submit(
                    run_root_readme_install, Install(folder, env, index, source)
                )
                continue
            if name == "copy":
                folder = copied_with_the_wheel(directory / "my-app", wheel)
                source = (folder / "wheels" / wheel.name).as_uri()
                readme = ROOT / "samples" / COPIED / "README.md"
            else:
                folder = laid_out_as_the_dockerfile_copies(name, directory / "image")
                source = (directory / "image" / "src").as_uri()
                readme = ROOT / "samples" / name / "README.md"
            install = Install(folder, env, index, source)
            started[name] = pool.submit(run_readme_install, install, readme)
        yield started
    for index in indexes:
        index.close()


def laid_out_as_the_dockerfile_copies(sample: str, root: Path) -> Path:
    """Copies what ``samples/SAMPLE/Dockerfile`` copies, where it copies it, under ``root``.

    Returns:
        The Dockerfile's ``WORKDIR`` under ``root``: the sample's folder.
    """
    workdir = root
    for line in (ROOT / "samples" / sample / "Dockerfile").read_text().splitlines():
        instruction, _, rest = line.partition(" ")
        if instruction == "WORKDIR":
            workdir = root / rest.strip().lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, target = rest.split()
            into = workdir / target if not target.startswith("/") else root / target.lstrip("/")
            for source in sources:
                copy(
                    ROOT / source,
                    into,
                    into_directory=len(sources) > 1 or target.endswith(("/", ".")),
                )
    return workdir


def copy(source: Path, target: Path, *, into_directory: bool) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(*SKIPPED), dirs_exist_ok=True)
        return
    target = target / source.name if into_directory else target
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def install_commands(readme: Path) -> list[str]:
    """The shell lines of the first ``sh`` block of the README's "Install" section."""
    section = readme.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def sh(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def root_readme_install_commands() -> list[str]:
    """The lines of the sh blocks of the repository README's "Install" section."""
    section = (ROOT / "README.md").read_text().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```sh\n")[1:]]
    return [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]


def run_root_readme_install(install: Install) -> Install:
    """Runs each of the README's install blocks at the root of a clone, in an activated
    virtualenv without the library: the path install, then the wheel's."""
    commands = root_readme_install_commands()
    steps = [
        f"{sys.executable} -m venv {install.bin.parent}",
        commands[0],
        "pip freeze > path-install.txt",
        "pip uninstall --yes cloudtasks-deferred",
        *commands[1:],
    ]
    for command in steps:
        result = sh(command, install.folder, install.env)
        if result.returncode != 0:
            install.problems.append(f"{command}:\n{result.stdout}\n{result.stderr}")
            break
    return install


def check_installed(install: Install) -> None:
    """The library came from ``install.source``, and the sample imports in the virtualenv."""
    assert install.problems == []
    folder, env = install.folder, install.env
    assert "cloudtasks-deferred" not in install.index.asked
    assert "google-cloud-ndb" in install.index.asked  # the recording index was asked for the rest
    freeze = sh(f"{install.bin}/pip freeze", folder, env).stdout.splitlines()
    installed = [line for line in freeze if line.startswith("cloudtasks-deferred")]
    assert len(installed) == 1
    assert re.fullmatch(
        re.escape(f"cloudtasks-deferred @ {install.source}") + r"(#sha256=\w+)?", installed[0]
    )
    version = sh(f"{install.bin}/cloudtasks-deferred --version", folder, env)
    assert version.stdout.strip() == f"cloudtasks-deferred {VERSION}", version.stderr
    if (folder / "main.py").exists():
        imported = sh(f"{install.bin}/python -c 'import main; print(main.__name__)'", folder, env)
        assert imported.stdout.strip() == "main", imported.stderr


@pytest.mark.parametrize("sample", SAMPLES)
def test_a_sample_installs_from_its_requirements_as_its_readme_says(
    sample: str, installs: dict[str, concurrent.futures.Future[Install]]
) -> None:
    commands = install_commands(ROOT / "samples" / sample / "README.md")
    assert commands == ["python3 -m venv .venv", ".venv/bin/pip install -r requirements.txt"]
    install = installs[sample].result(timeout=900)
    assert install.folder.parts[-3:] == ("src", "samples", sample)  # the Dockerfile's WORKDIR
    assert (install.folder / "requirements.txt").read_text().splitlines()[4].startswith("../..[")
    check_installed(install)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library's wheel, built once from the repository."""
    directory = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--wheel-dir",
            str(directory),
            str(ROOT),
        ],
        capture_output=True,
        check=True,
        timeout=600,
    )
    (built,) = directory.glob("*.whl")
    assert built.name == f"cloudtasks_deferred-{VERSION}-py3-none-any.whl"
    return built


def copied_with_the_wheel(folder: Path, wheel: Path) -> Path:
    """A copy of a sample made as its README says: the wheel in it, and requirements.txt's
    first line pointing at it."""
    shutil.copytree(ROOT / "samples" / COPIED, folder, ignore=shutil.ignore_patterns(*SKIPPED))
    (folder / "wheels").mkdir()
    shutil.copy(wheel, folder / "wheels")
    requirements = folder / "requirements.txt"
    lines = requirements.read_text().splitlines()
    lines[lines.index("../..[ndb]")] = f"./wheels/{wheel.name}[ndb]"
    requirements.write_text("\n".join(lines) + "\n")
    return folder


def test_a_copy_of_a_sample_installs_from_the_wheel_its_readme_says_to_put_in_it(
    wheel: Path, installs: dict[str, concurrent.futures.Future[Install]]
) -> None:
    readme = (ROOT / "samples" / COPIED / "README.md").read_text()
    assert f"```\n./wheels/{wheel.name}[ndb]\n```" in readme  # the line the README gives
    assert "pip wheel --no-deps --wheel-dir wheels /path/to/cloudtasks-deferred" in readme
    check_installed(installs["copy"].result(timeout=900))


def test_the_readme_install_lines_work_from_a_clone(
    wheel: Path, installs: dict[str, concurrent.futures.Future[Install]]
) -> None:
    assert root_readme_install_commands() == [
        "pip install '.[ndb]'",
        "pip wheel --no-deps --wheel-dir dist .",
        f"pip install 'dist/{wheel.name}[ndb]'",
    ]
    install = installs["readme"].result(timeout=900)
    check_installed(install)  # the wheel's install
    path_install = (install.folder / "path-install.txt").read_text().splitlines()
    assert f"cloudtasks-deferred @ {install.folder.as_uri()}" in path_install
