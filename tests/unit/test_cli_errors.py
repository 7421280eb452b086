"""Every documented entry point fails well: one line saying what is wrong and what to do,
the documented exit code, no traceback. Each case runs the real command in a child
process, as a user's shell would (issue 15: "First hour of a new user").

Exit codes (``cloudtasks_deferred.devtools.cli``): 1 an input's content or an operation, 2 the
command line (argparse's code, also for a path, module or program that does not
exist), 3 a missing emulator or tool.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.run_cli import ROOT, clean_env, cli, one_error_line, run

SAMPLES = ROOT / "samples"
BAD_YAML = "queue:\n - name: [\n"  # a flow sequence never closed: an error on line 3


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A directory holding a main.py with a WSGI app."""
    (tmp_path / "main.py").write_text(
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["emulator", "--python", "/nonexistent/python"],
            "argument --python: /nonexistent/python is not an executable program: give the "
            "path of a Python interpreter",
        ),
        (
            ["emulator", "--port", "70000"],
            "argument --port: '70000' is not a TCP port: give a number from 1 to 65535",
        ),
        (
            ["emulator", "--queue", "under_score"],
            "argument --queue: 'under_score' is not a Cloud Tasks queue ID: 1-100 letters, "
            "digits or hyphens",
        ),
        (
            ["emulator", "--queue-yaml", "/nonexistent/queue.yaml"],
            "argument --queue-yaml: /nonexistent/queue.yaml does not exist",
        ),
        (["dev", "main:app", "--port", "-5"], "argument --port: '-5' is not a TCP port"),
        (
            ["dev", "main:app", "--queue", "bad q"],
            "argument --queue: 'bad q' is not a Cloud Tasks queue ID",
        ),
        (
            ["dev", "main:app", "--app-dir", "/nonexistent"],
            "argument --app-dir: /nonexistent does not exist",
        ),
        (["dev", "main.py"], "argument APP: 'main.py' is not MODULE:ATTRIBUTE"),
        (
            ["dev", "main.py:app"],
            "argument APP: 'main.py:app' is not MODULE:ATTRIBUTE (a module name, not a file): "
            "give e.g. main:app",
        ),
        (
            ["dev", "main:app", "--tasks-emulator", "8123"],
            "argument --tasks-emulator: '8123' is not HOST:PORT, e.g. 127.0.0.1:8123",
        ),
        (["dev"], "give either APP (a WSGI app, e.g. main:app) or --functions-target"),
        (["dev", "main:app", "--tasks-target", "t"], "--tasks-target needs --functions-target"),
        (
            ["sweep", "--older-than", "nan"],
            "argument --older-than: 'nan' is not a number of seconds >= 0",
        ),
        (["sweep", "--limit", "0"], "argument --limit: '0' is not a whole number >= 1"),
        (
            ["inspect", "/nonexistent/body"],
            "argument FILE: /nonexistent/body does not exist: give a file, or - for standard input",
        ),
        (["inspect", "/"], "argument FILE: / is a directory"),
        (
            ["queue-yaml", "/nonexistent/queue.yaml"],
            "argument PATH: /nonexistent/queue.yaml does not exist",
        ),
        (["emulator", "--nope"], "unrecognized arguments: --nope"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_a_malformed_command_line_is_a_usage_error(argv: list[str], message: str) -> None:
    result = cli(*argv)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result, f"cloudtasks-deferred {argv[0]}: error: ")
    assert message in line
    assert result.stdout == ""


def test_no_command_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: cloudtasks-deferred")


def test_dev_names_a_missing_app_module_before_starting_anything(tmp_path: Path) -> None:
    result = cli("dev", "main:app", "--app-dir", str(tmp_path), "--port", "0")
    assert result.returncode == 2
    line = one_error_line(result, "cloudtasks-deferred dev: ")
    assert f"no module 'main' in {tmp_path.resolve()}: APP is MODULE:ATTRIBUTE" in line
    assert "[dev] starting" not in result.stdout


def test_dev_names_a_missing_functions_source(tmp_path: Path) -> None:
    result = cli("dev", "--functions-target", "f", "--app-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"no main.py in {tmp_path} (--source)" in one_error_line(
        result, "cloudtasks-deferred dev: "
    )


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_dev_names_the_process_holding_its_port(app_dir: Path, held_port: int) -> None:
    result = cli("dev", "main:app", "--app-dir", str(app_dir), "--port", str(held_port))
    assert result.returncode == 1
    line = one_error_line(result, "cloudtasks-deferred dev: ")
    assert line == (
        f"cloudtasks-deferred dev: port {held_port} on 127.0.0.1 is in use by process "
        f"{os.getpid()} ({line.split('(', 1)[1].rsplit(')', 1)[0]}): stop it or pass another --port"
    )
    assert "python" in line


@pytest.mark.parametrize("command", ["emulator", "dev"])
def test_a_bad_queue_file_is_reported_by_the_command_that_read_it(
    command: str, tmp_path: Path
) -> None:
    bad = tmp_path / "queues.json"
    bad.write_text("{}")
    argv = [command, "main:app"] if command == "dev" else [command]
    result = cli(*argv, "--queues-json", str(bad))
    assert result.returncode == 1
    line = one_error_line(result, f"cloudtasks-deferred {command}: ")
    assert line.endswith(f'{bad} has no "queues" object mapping queue IDs to settings')


@pytest.mark.parametrize(
    "argv", [["queue-yaml"], ["emulator", "--queue-yaml"], ["dev", "main:app", "--queue-yaml"]]
)
def test_a_yaml_error_names_the_file_and_the_line(argv: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "queue.yaml"
    bad.write_text(BAD_YAML)
    result = cli(*argv, str(bad))
    assert result.returncode == 1
    line = one_error_line(result, f"cloudtasks-deferred {argv[0]}: ")
    assert line.endswith(
        f"{bad}: not valid YAML at line 3, column 1: expected the node content, but found "
        "'<stream end>' (while parsing a flow node)"
    )
    assert "<unicode string>" not in result.stderr


def test_dev_says_which_pull_queues_it_does_not_create(app_dir: Path, tmp_path: Path) -> None:
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: mail\n  rate: 5/s\n- name: pulled\n  mode: pull\n")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: the attach fails fast
        host = f"127.0.0.1:{closed.getsockname()[1]}"
        result = cli(
            "dev", "main:app", "--app-dir", str(app_dir), "--port", "0", "--no-datastore",
            "--queue-yaml", str(queue_yaml), "--tasks-emulator", host,
        )  # fmt: skip
    assert result.returncode == 3
    assert (
        f"cloudtasks-deferred dev: warning: {queue_yaml}: pulled is a pull queue: not created "
        "(Cloud Tasks and deferred tasks use push queues"
    ) in result.stderr
    assert (
        "cannot create the queue projects/local-project/locations/us-central1/queues/default "
        f"in the Cloud Tasks emulator at {host}" in result.stderr
    )


def test_emulator_with_a_program_that_is_not_python_exits_3() -> None:
    result = cli("emulator", "--python", "/bin/true")
    assert result.returncode == 3
    line = one_error_line(result, "cloudtasks-deferred emulator: ")
    assert line == (
        "cloudtasks-deferred emulator: /bin/true is not a Python interpreter: give one "
        "with --python"
    )


def test_emulator_with_a_python_lacking_the_emulator_says_how_to_install_it(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True
    )
    python = str(tmp_path / "venv" / "bin" / "python")
    result = cli("emulator", "--python", python)
    assert result.returncode == 3
    assert one_error_line(result, "cloudtasks-deferred emulator: ") == (
        "cloudtasks-deferred emulator: gcloud-tasks-emulator is not installed: "
        f"{python} -m pip install --no-deps gcloud-tasks-emulator==0.6.2"
    )


def path_without(tmp_path: Path, *keep: str) -> str:
    """A PATH holding only links to the programs named in ``keep``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in keep:
        found = subprocess.run(["which", name], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            (bin_dir / name).symlink_to(found.stdout.strip())
    return str(bin_dir)


def test_dev_without_the_datastore_emulator_names_what_to_install(
    app_dir: Path, tmp_path: Path
) -> None:
    env = clean_env(PATH=path_without(tmp_path, "java"))
    result = cli("dev", "main:app", "--app-dir", str(app_dir), "--port", "0", env=env)
    assert result.returncode == 3
    line = one_error_line(result, "cloudtasks-deferred dev: ")
    assert (
        "NDB code needs the Datastore emulator, and the Datastore emulator is not installed" in line
    )
    assert "gcloud components install cloud-datastore-emulator" in line
    assert "--no-datastore" in line
    assert result.stdout == ""  # nothing was started


def test_dev_without_java_names_what_to_install(app_dir: Path, tmp_path: Path) -> None:
    env = clean_env(PATH=path_without(tmp_path, "gcloud"))
    result = cli("dev", "main:app", "--app-dir", str(app_dir), "--port", "0", env=env)
    if "gcloud components install" in result.stderr:
        pytest.skip("no Cloud SDK Datastore emulator on this machine")  # the case above
    assert result.returncode == 3
    line = one_error_line(result, "cloudtasks-deferred dev: ")
    assert (
        "the Datastore emulator runs on Java, and `java` is not on the PATH: install Java 11"
        in line
    )


def devserver(
    *args: str, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "cloudtasks_deferred.devtools.devserver", *args], env=env, cwd=cwd
    )


def dev_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """What ``cloudtasks-deferred dev`` sets for its app (no emulator need answer)."""
    return clean_env(
        GOOGLE_CLOUD_PROJECT="local-project",
        CLOUD_TASKS_EMULATOR_HOST="127.0.0.1:9",
        CLOUDTASKS_DEFERRED_LOCATION="us-central1",
        CLOUDTASKS_DEFERRED_BASE_URL="http://127.0.0.1:8080",
        CLOUDTASKS_DEFERRED_DEV_MODE="true",
        CLOUDTASKS_DEFERRED_DEV_KEY_FILE=str(tmp_path / "dev-key.pem"),
        **variables,
    )


def test_devserver_without_its_environment_refuses_to_start() -> None:
    result = devserver(
        "main:app", "--app-dir", str(SAMPLES / "wsgi"), "--port", "0", env=clean_env()
    )
    assert result.returncode == 1
    line = one_error_line(result, "python -m cloudtasks_deferred.devtools.devserver: ")
    assert (
        "CLOUD_TASKS_EMULATOR_HOST, CLOUDTASKS_DEFERRED_DEV_MODE=true, "
        "CLOUDTASKS_DEFERRED_LOCATION, CLOUDTASKS_DEFERRED_BASE_URL not set, so tasks could "
        "not reach this server: run the app with `cloudtasks-deferred dev MODULE:ATTRIBUTE`"
    ) in line


def test_devserver_without_datastore_says_so_without_an_install_hint(tmp_path: Path) -> None:
    result = devserver("main:app", "--app-dir", str(SAMPLES / "wsgi"), env=dev_env(tmp_path))
    assert result.returncode == 1
    line = one_error_line(result, "python -m cloudtasks_deferred.devtools.devserver: ")
    assert "NDB cannot reach Datastore (File /nonexistent/credentials.json was not found.)" in line
    assert "DATASTORE_EMULATOR_HOST, which cloudtasks-deferred dev sets" in line
    assert "CLOUDTASKS_DEFERRED_NDB=false" in line
    assert "pip install" not in line  # google-cloud-ndb is installed


def test_devserver_names_a_missing_attribute(tmp_path: Path) -> None:
    env = dev_env(tmp_path, CLOUDTASKS_DEFERRED_NDB="false")
    result = devserver("main:nosuchattr", "--app-dir", str(SAMPLES / "wsgi"), env=env)
    assert result.returncode == 1
    assert one_error_line(result, "python -m cloudtasks_deferred.devtools.devserver: ") == (
        "python -m cloudtasks_deferred.devtools.devserver: cannot load main:nosuchattr: "
        "main has no "
        "attribute 'nosuchattr'"
    )


def test_devserver_suggests_a_close_attribute(tmp_path: Path, app_dir: Path) -> None:
    env = dev_env(tmp_path, CLOUDTASKS_DEFERRED_NDB="false")
    result = devserver("main:ap", "--app-dir", str(app_dir), env=env)
    assert result.returncode == 1
    assert one_error_line(result, "python -m cloudtasks_deferred.devtools.devserver: ").endswith(
        "cannot load main:ap: main has no attribute 'ap' (did you mean main:app?)"
    )


def test_devserver_says_where_the_app_failed_to_import(tmp_path: Path, app_dir: Path) -> None:
    (app_dir / "main.py").write_text("import os\nimport no_such_dependency\n")
    env = dev_env(tmp_path, CLOUDTASKS_DEFERRED_NDB="false")
    result = devserver("main:app", "--app-dir", str(app_dir), env=env)
    assert result.returncode == 1
    assert one_error_line(result, "python -m cloudtasks_deferred.devtools.devserver: ").endswith(
        "cannot load main:app: importing main failed: ModuleNotFoundError: No module named "
        f"'no_such_dependency' ({app_dir / 'main.py'}, line 2): install the app's requirements"
    )


def test_sweep_without_datastore_access_says_so_without_an_install_hint() -> None:
    result = cli("sweep")
    assert result.returncode == 1
    line = one_error_line(result, "cloudtasks-deferred sweep: ")
    assert line.startswith(
        "cloudtasks-deferred sweep: the outbox sweeper needs Datastore, and NDB cannot reach "
        "Datastore "
        "(File /nonexistent/credentials.json was not found.)"
    )
    assert "pip install" not in line
