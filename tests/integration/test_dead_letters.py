"""Dead letters on the Datastore emulator and the Cloud Tasks emulator, replayed with the CLI.

The acceptance test of issue 13, part 1: a task fails for good (or its payload is refused
by the allowlist), ``cloudtasks-deferred dead-letters list`` — the real command, in a child
process configured like an operator's shell — shows it, the bug is fixed (a flag file the
task reads appears, or the allowlist is widened), ``dead-letters replay`` makes it run once,
to success, and the record says it was replayed. Then the Datastore store itself: one
record per task, the claim, payloads too large for an entity, purging, and a replayed
oversized payload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from google.cloud import ndb, tasks_v2

from cloudtasks_deferred import Client, DeadLetters, Handler, Settings
from cloudtasks_deferred.devtools.emulators import DatastoreEmulator
from cloudtasks_deferred.settings import DeadLetterStorage
from cloudtasks_deferred.storage import entities
from cloudtasks_deferred.storage.datastore import Datastore
from cloudtasks_deferred.storage.dead_letter_entities import INLINE_PAYLOAD_BYTES
from cloudtasks_deferred.storage.dead_letter_sinks import DatastoreDeadLetters
from cloudtasks_deferred.storage.dead_letters import Cause, DeadLetter, Status
from cloudtasks_deferred.testing import TEST_SETTINGS, in_memory_queue
from tests import dead_letter_tasks
from tests.integration.conftest import LOCATION, PROJECT, Server
from tests.integration.entities import counts, keys
from tests.integration.processes import wait_until
from tests.run_cli import clean_env, cli

pytestmark = pytest.mark.integration

ALLOWED = ("tests.tasks",)
WIDENED = ("tests.tasks", "tests.dead_letter_tasks")


@pytest.fixture
def service(
    server: Server,
    dev_settings: Callable[..., Settings],
    tasks_client: tasks_v2.CloudTasksClient,
    datastore: DatastoreEmulator,
) -> Callable[..., Client]:
    """Serves the handler for settings like the deployed service's; returns its client."""

    def deploy(**changes: Any) -> Client:
        settings = dev_settings(
            server.url, ndb=True, dead_letters=DeadLetterStorage.DATASTORE, **changes
        )
        client = Client(settings)
        server.app = Handler(client=client)
        return client

    return deploy


def operator_env(client: Client, datastore: DatastoreEmulator) -> dict[str, str]:
    """The shell of an operator: the service's configuration, and Datastore."""
    settings = client.settings
    assert settings.emulator_host is not None
    assert settings.base_url is not None
    return clean_env(
        GOOGLE_CLOUD_PROJECT=PROJECT,
        CLOUDTASKS_DEFERRED_LOCATION=LOCATION,
        CLOUDTASKS_DEFERRED_BASE_URL=settings.base_url,
        CLOUD_TASKS_EMULATOR_HOST=settings.emulator_host,
        CLOUDTASKS_DEFERRED_DEV_MODE="true",
        CLOUDTASKS_DEFERRED_DEV_KEY_FILE=str(settings.dev_key_file),
        CLOUDTASKS_DEFERRED_DEAD_LETTERS="datastore",
        **datastore.env,
    )


def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    """``dead-letters list --json``, run as a user does."""
    result = cli("dead-letters", "list", "--json", env=env)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    records: list[dict[str, Any]] = json.loads(result.stdout)
    return records


def one_letter(client: Client, **wanted: Any) -> DeadLetter:
    """Waits for the service to record a dead letter (with ``wanted`` attributes)."""
    letters = DeadLetters(client)

    def recorded() -> bool:
        found = letters.list()
        return len(found) == 1 and all(getattr(found[0], k) == v for k, v in wanted.items())

    wait_until(f"a dead letter with {wanted}", recorded, timeout=20)
    [letter] = letters.list()
    return letter


def test_a_task_that_failed_for_good_is_listed_replayed_after_the_fix_and_runs_once(
    service: Callable[..., Client], datastore: DatastoreEmulator, tmp_path: Path
) -> None:
    client = service()
    flag, report = tmp_path / "fixed", str(tmp_path / "runs.txt")
    client.defer(dead_letter_tasks.append_once_fixed, str(flag), report, "permanent")
    letter = one_letter(client)
    env = operator_env(client, datastore)

    shown = cli("dead-letters", "list", env=env)
    assert shown.returncode == 0, shown.stderr
    [_, row] = shown.stdout.splitlines()
    assert row.startswith(f"{letter.id}  new     permanent-failure  default  1 ")
    assert row.endswith(" tests.dead_letter_tasks.append_once_fixed")

    flag.touch()  # the fix
    replayed = cli("dead-letters", "replay", letter.id, env=env)
    task = f"projects/{PROJECT}/locations/{LOCATION}/queues/default/tasks/{letter.id}-replay-1"
    assert (replayed.returncode, replayed.stdout, replayed.stderr) == (
        0,
        f"replayed {letter.id} as task {task}\n",
        "",
    )
    wait_until("the replayed task to run", lambda: dead_letter_tasks.runs(report) != [])
    [record] = listed(env)
    assert (record["id"], record["status"], record["replay_task"]) == (letter.id, "replayed", task)
    time.sleep(0.5)  # anything more would have run by now: the emulator retries in 0.1 s
    assert dead_letter_tasks.runs(report) == ["permanent"]


def paused(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The service while a deploy is under way: every request answered 503."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"deploying"]


def test_a_refused_payload_is_listed_replayed_once_the_allowlist_is_widened_and_runs_once(
    service: Callable[..., Client],
    server: Server,
    datastore: DatastoreEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = service(allowed_modules=ALLOWED)
    report = str(tmp_path / "runs.txt")
    client.defer(dead_letter_tasks.append, report, "refused")
    # Refused (403) and retried by the queue: every refusal updates one record.
    letter = one_letter(client, cause=Cause.REFUSED)
    wait_until("a retried refusal", lambda: DeadLetters(client).get(letter.id).deliveries >= 3)
    env = operator_env(client, datastore)
    [record] = listed(env)
    assert (record["cause"], record["status"]) == ("refused", "new")
    assert record["reason"].startswith("DisallowedReferenceError: ")

    # The fix goes out: while it deploys, the operator replays the task.
    server.app = paused
    replayed = cli("dead-letters", "replay", "--all", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"replayed {letter.id} as task ")
    with caplog.at_level(logging.INFO, logger="cloudtasks_deferred.dead_letters"):
        service(allowed_modules=WIDENED)
        # Both reach the widened service: the replay's task runs the call; the original,
        # still retried by its queue, finds its record replayed and does nothing.
        wait_until("the replayed task to run", lambda: dead_letter_tasks.runs(report) != [])
        wait_until(
            "the queue's own retry to stand down",
            lambda: any("was replayed" in r.getMessage() for r in caplog.records),
        )
    time.sleep(0.5)
    assert dead_letter_tasks.runs(report) == ["refused"]
    [record] = listed(env)
    assert (record["status"], record["replays"]) == ("replayed", 1)


def test_show_reads_the_record_and_its_payload_without_running_it(
    service: Callable[..., Client], datastore: DatastoreEmulator, tmp_path: Path
) -> None:
    client = service()
    client.defer(
        dead_letter_tasks.append_once_fixed,
        str(tmp_path / "fixed"),
        str(tmp_path / "runs.txt"),
        "shown",
        _headers={"X-Custom": "v"},
    )
    letter = one_letter(client)
    shown = cli("dead-letters", "show", letter.id, env=operator_env(client, datastore))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"id                {letter.id}\nstatus            new\n")
    assert "header            X-Custom: v\n" in shown.stdout
    assert "Authorization" not in shown.stdout  # the dev-mode token the task carried
    assert "  callable    tests.dead_letter_tasks.append_once_fixed\n" in shown.stdout
    assert dead_letter_tasks.runs(str(tmp_path / "runs.txt")) == []


# The Datastore store itself.


def letter(**changes: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "cause": Cause.PERMANENT_FAILURE,
        "reason": "PermanentTaskFailure: no",
        "payload": b"body",
        "queue_name": "default",
        "task_name": "task-1",
        "headers": (("X-Custom", "v"),),
        "traceback": "Traceback ...",
    }
    values.update(changes)
    return DeadLetter.new(**values)


@pytest.fixture
def store(datastore: DatastoreEmulator) -> DatastoreDeadLetters:
    return DatastoreDeadLetters(Datastore(Settings(project=PROJECT, ndb=True)))


def test_the_datastore_store_keeps_one_record_per_task_and_applies_the_rules(
    store: DatastoreDeadLetters,
) -> None:
    first = letter()
    store.record(first)
    store.record(letter(retry_count=2, reason="again"))
    [key] = keys("_DeferredDeadLetter")
    assert (key.id(), key.namespace()) == (first.id, None)  # the default namespace
    got = store.get(first.id)
    assert got is not None
    assert (got.deliveries, got.retry_count, got.reason, got.payload) == (2, 2, "again", b"body")
    assert got.headers == (("X-Custom", "v"),)
    assert got.first_failed_at == first.first_failed_at
    assert got.first_failed_at.tzinfo is not None
    assert store.claim("no-such-record") is True
    assert store.claim(first.id) is True
    assert store.get(first.id).status is Status.RESOLVED  # type: ignore[union-attr]
    store.record(letter())  # failed again after its queue took it over
    started = store.begin_replay(first.id)
    assert (started.status, started.replays) == (Status.REPLAYING, 1)
    assert store.claim(first.id) is False
    done = store.finish_replay(first.id, 1, "q/tasks/t")
    assert (done.status, done.replay_task) == (Status.REPLAYED, "q/tasks/t")
    assert store.get(first.id) == done


def test_the_datastore_store_finds_filters_and_purges(store: DatastoreDeadLetters) -> None:
    now = datetime.now(UTC)
    for name, queue, age in (("a", "default", 3), ("b", "mail", 2), ("c", "default", 1)):
        store.record(letter(task_name=name, queue_name=queue, now=now - timedelta(days=age)))
    assert [x.task_name for x in store.find()] == ["c", "b", "a"]
    assert [x.task_name for x in store.find(queue="default", limit=1)] == ["c"]
    assert [x.task_name for x in store.find(since=now - timedelta(days=2, hours=1))] == ["c", "b"]
    [b] = store.find(queue="mail")
    store.begin_replay(b.id)
    assert [x.task_name for x in store.find(statuses={Status.REPLAYING})] == ["b"]
    assert store.purge(now - timedelta(days=1, hours=12)) == 2
    assert [x.task_name for x in store.find()] == ["c"]


def test_a_payload_too_large_for_the_record_is_kept_beside_it_and_purged_with_it(
    store: DatastoreDeadLetters,
) -> None:
    body = random.Random(7).randbytes(1_040_000)  # noqa: S311 - test data
    assert len(body) > INLINE_PAYLOAD_BYTES
    big = letter(payload=body)
    store.record(big)
    store.record(letter(payload=body, retry_count=1))
    got = store.get(big.id)
    assert got is not None
    assert (got.payload, got.deliveries) == (body, 2)
    assert counts() == {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1}
    assert store.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert counts() == {}
    assert keys("_DeferredDeadLetter") == []


def test_an_oversized_payload_is_kept_for_its_dead_letter_and_replayed(
    datastore: DatastoreEmulator, tmp_path: Path
) -> None:
    flag, report = tmp_path / "fixed", str(tmp_path / "runs.txt")
    blob = random.Random(8).randbytes(1_500_000)  # noqa: S311 - incompressible: stored
    with in_memory_queue(dataclasses.replace(TEST_SETTINGS, project=PROJECT)) as queue:
        queue.client.defer(dead_letter_tasks.digest_once_fixed, str(flag), report, blob)
        assert queue.run_pending() == [HTTPStatus.OK]
        [dead] = queue.dead_letters
        assert dead.stored_payload is not None
        assert counts() == {"_DeferredTaskEntity": 1, "_DeferredTaskChunk": 1}  # kept
        flag.touch()
        done = DeadLetters(queue.client).replay(dead.id)
        with ndb.Client(project=PROJECT).context():
            [copy] = ndb.Query(kind="_DeferredTaskEntity", namespace="").fetch(keys_only=True)
            original = entities.parse_key(dead.stored_payload, entities.DeferredTaskEntity)
        assert copy.id() == f"{dead.id}-replay-1"  # the replay's copy; the original is gone
        assert original != copy
        assert done.status is Status.REPLAYED
        assert queue.run_pending() == [HTTPStatus.OK]
    assert dead_letter_tasks.runs(report) == [f"{len(blob)} {hashlib.sha256(blob).hexdigest()}"]
    assert counts() == {}  # run: its copy deleted


def test_a_transactional_task_given_up_is_replayed_outside_its_spent_guard(
    datastore: DatastoreEmulator, tmp_path: Path
) -> None:
    flag, report = tmp_path / "fixed", str(tmp_path / "runs.txt")
    with in_memory_queue(dataclasses.replace(TEST_SETTINGS, project=PROJECT)) as queue:
        with ndb.Client(project=PROJECT).context():
            ndb.transaction(
                lambda: queue.client.defer(
                    dead_letter_tasks.append_once_fixed,
                    str(flag),
                    report,
                    "transactional",
                    _transactional=True,
                )
            )
        assert queue.run_pending() == [HTTPStatus.OK]
        assert counts() == {}  # its guard's entries are gone: it was given up
        [dead] = queue.dead_letters
        flag.touch()
        DeadLetters(queue.client).replay(dead.id)
        assert queue.run_pending() == [HTTPStatus.OK]
    assert dead_letter_tasks.runs(report) == ["transactional"]
