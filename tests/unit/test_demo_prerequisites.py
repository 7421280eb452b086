"""The README's first command checks what it needs before starting or installing anything.

``scripts/demo`` (bash) checks what pip cannot install — the Datastore emulator and the
Java that runs it — before ``scripts/bootstrap``; ``scripts/demo.py`` checks those, the
Cloud Tasks emulator and the app's port before starting anything. Each missing piece is
one line naming what to install, with exit code 3 (1 for a port in use).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.run_cli import ROOT, clean_env, one_error_line, run

DEMO_PY = [sys.executable, str(ROOT / "scripts" / "demo.py")]
NO_SDK = (
    "scripts/demo: the Datastore emulator is not installed: install the Google Cloud SDK and "
    "run `gcloud components install cloud-datastore-emulator` (or the "
    "google-cloud-cli-datastore-emulator package)"
)
NO_JAVA = (
    "scripts/demo: the Datastore emulator runs on Java, and `java` is not on the PATH: "
    "install Java 11 or later (e.g. apt-get install openjdk-17-jre-headless)"
)


def path_of(tmp_path: Path, *programs: str) -> str:
    """A PATH holding only links to ``programs`` (those this machine has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in programs:
        found = subprocess.run(["which", name], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            (bin_dir / name).symlink_to(found.stdout.strip())
    return str(bin_dir)


def assert_nothing_started(result: subprocess.CompletedProcess[str]) -> None:
    assert "[demo]" not in result.stdout
    assert "Installing into .venv" not in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_without_the_datastore_emulator_names_what_to_install(tmp_path: Path) -> None:
    result = run([*DEMO_PY, "--port", "0"], env=clean_env(PATH=path_of(tmp_path, "java")))
    assert result.returncode == 3
    assert one_error_line(result, "scripts/demo: ") == NO_SDK
    assert_nothing_started(result)


def test_demo_without_java_names_what_to_install(tmp_path: Path) -> None:
    result = run([*DEMO_PY, "--port", "0"], env=clean_env(PATH=path_of(tmp_path, "gcloud")))
    assert result.returncode == 3
    assert one_error_line(result, "scripts/demo: ") == NO_JAVA
    assert_nothing_started(result)


def test_demo_names_the_process_holding_its_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run([*DEMO_PY, "--port", str(port), "--datastore-emulator", "127.0.0.1:1"])
    assert result.returncode == 1
    line = one_error_line(result, "scripts/demo: ")
    assert line.startswith(
        f"scripts/demo: port {port} on 127.0.0.1 is in use by process {os.getpid()} ("
    )
    assert line.endswith("): stop it, or pass --port (0: a free one)")
    assert_nothing_started(result)


def test_the_readme_command_checks_before_installing(tmp_path: Path) -> None:
    tools = ("bash", "dirname", "readlink")
    for missing, expected in (("gcloud", NO_SDK), ("java", NO_JAVA)):
        directory = tmp_path / missing
        directory.mkdir()
        present = [name for name in ("gcloud", "java") if name != missing]
        env = clean_env(PATH=path_of(directory, *tools, *present))
        result = run([str(ROOT / "scripts" / "demo")], env=env)
        assert result.returncode == 3, result.stderr
        assert result.stderr == expected + "\n"
        assert_nothing_started(result)
