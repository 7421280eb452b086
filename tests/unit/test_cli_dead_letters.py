"""``cloudtasks-deferred dead-letters``: each command's output, errors and exit code.

The commands run in-process on an in-memory store; ``tests/integration/test_dead_letters.py``
runs them as a user does, on the emulators.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest
from google.api_core import exceptions

from cloudtasks_deferred import DeadLetters
from cloudtasks_deferred.devtools import cli, cli_dead_letters
from cloudtasks_deferred.storage.dead_letters import Status
from cloudtasks_deferred.testing import InMemoryQueue, in_memory_queue
from tests import dead_letter_tasks

PREFIX = "cloudtasks-deferred dead-letters"


def one_error_line(captured: pytest.CaptureResult[str], prefix: str) -> str:
    """The command's error: exactly one line on stderr, starting with ``prefix``."""
    assert "Traceback" not in captured.err
    [line] = captured.err.splitlines()
    assert line.startswith(prefix)
    return line


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryQueue]:
    """An in-memory queue whose store the commands read."""
    with in_memory_queue() as running:
        monkeypatch.setattr(
            cli_dead_letters, "open_dead_letters", lambda: DeadLetters(running.client)
        )
        yield running


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    return str(tmp_path / "fixed"), str(tmp_path / "runs.txt")


def fail_one(queue: InMemoryQueue, files: tuple[str, str], value: str, **options: object) -> str:
    flag, report = files
    queue.client.defer(dead_letter_tasks.append_once_fixed, flag, report, value, **options)
    assert queue.run_pending() == [HTTPStatus.OK]
    return queue.dead_letters[-1].id


@pytest.mark.parametrize("command", ["list", "show", "replay", "purge"])
def test_every_command_documents_its_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["dead-letters", command, "--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"usage: {PREFIX} {command}" in out
    assert "Exit codes: 0 done, 1 " in out
    assert "2 usage, 3 google-cloud-ndb is not installed" in out


def test_no_command_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dead-letters"]) == 2
    err = capsys.readouterr().err
    for command in ("list", "show", "replay", "purge"):
        assert f"    {command} " in err


def test_list_prints_a_table_newest_first(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = fail_one(queue, files, "a")
    second = fail_one(queue, files, "b", _queue="mail")
    assert cli.main(["dead-letters", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID", "STATUS", "CAUSE", "QUEUE", "ATTEMPTS", "LAST", "FAILED", "(UTC)", "CALLABLE",
    ]  # fmt: skip
    assert lines[1].startswith(f"{second}  new     permanent-failure  mail ")
    assert lines[1].endswith(" tests.dead_letter_tasks.append_once_fixed")
    assert lines[2].startswith(f"{first}  new     permanent-failure  default")
    assert len(lines) == 3


def test_list_filters_and_prints_json(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fail_one(queue, files, "a")
    mail = fail_one(queue, files, "b", _queue="mail")
    assert cli.main(["dead-letters", "list", "--queue", "mail", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert (record["id"], record["queue_name"], record["status"]) == (mail, "mail", "new")
    assert "payload" not in record
    assert record["payload_bytes"] > 0
    assert cli.main(["dead-letters", "list", "--since", "1h", "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert cli.main(["dead-letters", "list", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == "no dead letters\n"
    assert cli.main(["dead-letters", "list", "--status", "replayed"]) == 0
    assert capsys.readouterr().out == "no dead letters\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list", "--since", "yesterday"], "argument --since: 'yesterday' is neither an ISO"),
        (["list", "--limit", "0"], "argument --limit: '0' is not a whole number >= 1"),
        (["list", "--queue", "no_underscores"], "argument --queue: 'no_underscores' is not"),
        (["purge"], "the following arguments are required: --older-than"),
        (["purge", "--older-than", "30y"], "argument --older-than: '30y' is not a duration"),
        (["replay"], "give the IDs to replay, or --all (with --queue to narrow it)"),
        (["replay", "abc", "--all"], "give the IDs to replay, or --all"),
        (["replay", "abc", "--queue", "mail"], "give the IDs to replay, or --all"),
        (["show"], "the following arguments are required: ID"),
    ],
)
def test_usage_errors_exit_2_naming_the_argument(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["dead-letters", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_show_prints_the_record_and_the_payload_it_would_run(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    letter_id = fail_one(queue, files, "shown", _headers={"X-Custom": "v"})
    assert cli.main(["dead-letters", "show", letter_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"id                {letter_id}\nstatus            new\n")
    assert "cause             permanent-failure\n" in out
    assert "header            X-Custom: v\n" in out
    assert "traceback\n" in out
    assert "PermanentTaskFailure: not fixed yet" in out
    # The inspect view: the pickle read, never unpickled.
    assert "\npayload\n  frame       version 1, flags 0x00 (none)\n" in out
    assert "  callable    tests.dead_letter_tasks.append_once_fixed\n" in out
    assert "'shown'\n" in out


def test_show_an_unknown_record_exits_1(
    queue: InMemoryQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["dead-letters", "show", "nope"]) == 1
    assert capsys.readouterr().err == f"{PREFIX} show: no dead letter nope\n"


def test_replay_enqueues_and_reports_each_record(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = fail_one(queue, files, "a")
    second = fail_one(queue, files, "b")
    Path(files[0]).touch()
    assert cli.main(["dead-letters", "replay", first, "nope", second]) == 1
    captured = capsys.readouterr()
    parent = "projects/test-project/locations/us-central1/queues/default"
    assert captured.out == (
        f"replayed {first} as task {parent}/tasks/{first}-replay-1\n"
        f"replayed {second} as task {parent}/tasks/{second}-replay-1\n"
    )
    assert captured.err == f"{PREFIX} replay: nope: no dead letter nope\n"
    assert queue.run_pending() == [HTTPStatus.OK, HTTPStatus.OK]
    assert dead_letter_tasks.runs(files[1]) == ["a", "b"]
    assert cli.main(["dead-letters", "replay", first]) == 1
    assert "was replayed already" in one_error_line(capsys.readouterr(), f"{PREFIX} replay: ")


def test_replay_all_of_a_queue(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fail_one(queue, files, "a")
    mail = fail_one(queue, files, "b", _queue="mail")
    assert cli.main(["dead-letters", "replay", "--all", "--queue", "mail"]) == 0
    assert capsys.readouterr().out.startswith(f"replayed {mail} as task ")
    assert cli.main(["dead-letters", "replay", "--all", "--queue", "mail"]) == 0
    assert capsys.readouterr().out == "nothing to replay\n"
    assert [x.status for x in queue.dead_letters] == [Status.NEW, Status.REPLAYED]


def test_a_replay_cloud_tasks_refuses_exits_1_and_says_to_run_it_again(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    letter_id = fail_one(queue, files, "a")

    def refuse(parent: str, task: object) -> object:
        raise exceptions.PermissionDenied("the caller lacks cloudtasks.tasks.create")

    queue.transport.create_task = refuse  # type: ignore[method-assign]
    assert cli.main(["dead-letters", "replay", letter_id]) == 1
    line = one_error_line(capsys.readouterr(), f"{PREFIX} replay: ")
    assert line == (
        f"{PREFIX} replay: {letter_id}: PermissionDenied: 403 the caller lacks "
        "cloudtasks.tasks.create; the record stays replaying: replay it again"
    )
    assert queue.dead_letters[0].status is Status.REPLAYING


def test_purge(
    queue: InMemoryQueue, files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fail_one(queue, files, "a")
    assert cli.main(["dead-letters", "purge", "--older-than", "30d"]) == 0
    assert capsys.readouterr().out == "purged 0 dead letters older than 30 days, 0:00:00\n"
    assert cli.main(["dead-letters", "purge", "--older-than", "0"]) == 0
    assert capsys.readouterr().out == "purged 1 dead letter older than 0:00:00\n"
    assert queue.dead_letters == []


# Opening the store from the environment (no store patched in).


def test_dead_letters_that_are_only_logged_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_DEAD_LETTERS", "log")
    assert cli.main(["dead-letters", "list"]) == 1
    assert one_error_line(capsys.readouterr(), PREFIX) == (
        f"{PREFIX} list: CLOUDTASKS_DEFERRED_DEAD_LETTERS=log: dead letters are only logged, "
        "so there are no records to read; set it to datastore (or auto) for the service and here"
    )


def test_an_invalid_configuration_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDTASKS_DEFERRED_DEAD_LETTERS", "sometimes")
    assert cli.main(["dead-letters", "purge", "--older-than", "1d"]) == 1
    assert one_error_line(capsys.readouterr(), PREFIX) == (
        f"{PREFIX} purge: CLOUDTASKS_DEFERRED_DEAD_LETTERS='sometimes': expected "
        "auto/datastore/log."
    )


def test_no_datastore_exits_1_saying_what_to_configure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")  # no credentials, no emulator
    assert cli.main(["dead-letters", "list"]) == 1
    line = one_error_line(capsys.readouterr(), PREFIX)
    assert line.startswith(f"{PREFIX} list: dead letters are kept in Datastore, and NDB cannot")
    assert "DATASTORE_EMULATOR_HOST" in line


def test_without_google_cloud_ndb_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_dead_letters.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["dead-letters", "show", "abc"]) == 3
    assert one_error_line(capsys.readouterr(), PREFIX) == (
        f"{PREFIX} show: dead letters are read from Datastore with google-cloud-ndb, which is "
        "not installed: pip install 'cloudtasks-deferred[ndb]'"
    )
