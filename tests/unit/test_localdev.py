"""Local development helpers: queue files, and the environment handed to the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudtasks_deferred import Settings
from cloudtasks_deferred.localdev import (
    LocalEmulators,
    QueueFileError,
    app_environment,
    full_queue_names,
    queue_ids,
    queue_ids_from_tfvars,
    queue_ids_from_yaml,
)

QUEUE_YAML = """\
queue:
- name: mail
  rate: 5/s
  retry_parameters:
    task_retry_limit: 3
- name: reports-2
  mode: pull
- name: mail
  rate: 1/s
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_queue_yaml_names_plus_the_default_queue(tmp_path: Path) -> None:
    path = write(tmp_path, "queue.yaml", QUEUE_YAML)
    assert queue_ids_from_yaml(path) == ["default", "mail", "reports-2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("queue: [", "not valid YAML"),
        ("total_storage_limit: 1G\n", "no `queue:` list"),
        ("- name: x\n", "no `queue:` list"),
        ("queue:\n- rate: 5/s\n", "queue entry 1 has no `name`"),
        ("queue:\n- name: under_score\n", "'under_score' is not a Cloud Tasks queue ID"),
    ],
)
def test_bad_queue_yaml_says_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(QueueFileError, match=message):
        queue_ids_from_yaml(write(tmp_path, "queue.yaml", text))


def test_tfvars_queue_map_keys(tmp_path: Path) -> None:
    document = {"project": "p", "queues": {"default": {}, "mail": {"max_attempts": 4}}}
    path = write(tmp_path, "queues.tfvars.json", json.dumps(document))
    assert queue_ids_from_tfvars(path) == ["default", "mail"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", 'no "queues" object'),
        ('{"queues": {}}', 'no "queues" object'),
        ('{"queues": ["a"]}', 'no "queues" object'),
        ('{"queues": {"bad name": {}}}', "'bad name' is not a Cloud Tasks queue ID"),
    ],
)
def test_bad_tfvars_say_why(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(QueueFileError, match=message):
        queue_ids_from_tfvars(write(tmp_path, "q.tfvars.json", text))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(QueueFileError, match=r"cannot read .*absent\.yaml"):
        queue_ids_from_yaml(tmp_path / "absent.yaml")


def test_queue_ids_combine_names_and_files(tmp_path: Path) -> None:
    yaml_file = write(tmp_path, "queue.yaml", QUEUE_YAML)
    tfvars = write(tmp_path, "q.json", json.dumps({"queues": {"jobs": {}, "mail": {}}}))
    assert queue_ids() == ["default"]
    assert queue_ids(["a"]) == ["a"]
    assert queue_ids(["a"], yaml_file, tfvars) == ["a", "default", "mail", "reports-2", "jobs"]
    with pytest.raises(QueueFileError, match="'a b' is not"):
        queue_ids(["a b"])


def test_full_queue_names() -> None:
    assert full_queue_names("p", "us-central1", ["default"]) == [
        "projects/p/locations/us-central1/queues/default"
    ]


def test_app_environment_is_what_settings_read(tmp_path: Path) -> None:
    emulators = LocalEmulators("local-project", "127.0.0.1:8123", "127.0.0.1:8081")
    env = app_environment(
        emulators,
        location="us-central1",
        base_url="http://127.0.0.1:8080",
        dev_key_file=tmp_path / "key.pem",
    )
    assert env["DATASTORE_EMULATOR_HOST"] == "127.0.0.1:8081"
    assert env["DATASTORE_PROJECT_ID"] == "local-project"
    assert "CLOUDTASKS_DEFERRED_NDB" not in env
    settings = Settings.from_env(env)
    assert settings.project == "local-project"
    assert settings.location == "us-central1"
    assert settings.emulator_host == "127.0.0.1:8123"
    assert settings.base_url == "http://127.0.0.1:8080"
    assert settings.dev_mode is True
    assert settings.dev_key_file == tmp_path / "key.pem"


def test_without_datastore_tasks_run_without_ndb(tmp_path: Path) -> None:
    emulators = LocalEmulators("local-project", "127.0.0.1:8123", None)
    env = app_environment(
        emulators, location="us-central1", base_url="http://127.0.0.1:1", dev_key_file=tmp_path
    )
    assert "DATASTORE_EMULATOR_HOST" not in env
    assert Settings.from_env(env).ndb is False
