"""Local development helpers: queue files, and the environment handed to the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudtasks_deferred import Settings
from cloudtasks_deferred.devtools.localdev import (
    LocalEmulators,
    QueueFileError,
    QueueIds,
    app_environment,
    full_queue_names,
    queue_ids,
    queue_ids_from_tfvars,
    queue_ids_from_yaml,
)
from cloudtasks_deferred.devtools.queue_yaml import QueueYamlError, convert

QUEUE_YAML = """\
queue:
- name: mail
  rate: 5/s
  retry_parameters:
    task_retry_limit: 3
- name: reports-2
  mode: pull
- name: batch
  rate: 1/s
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_queue_yaml_push_queues_plus_the_default_queue(tmp_path: Path) -> None:
    path = write(tmp_path, "queue.yaml", QUEUE_YAML)
    found = queue_ids_from_yaml(path)
    assert found.ids == ["default", "mail", "batch"]
    assert found.skipped == (
        f"{path}: reports-2 is a pull queue: not created (Cloud Tasks and deferred tasks use "
        "push queues; App Engine's pull queue API has no Cloud Tasks equivalent)",
    )


def test_queue_yaml_gives_the_queues_terraform_would_create(tmp_path: Path) -> None:
    path = write(tmp_path, "queue.yaml", QUEUE_YAML + "- name: default\n  rate: 2/s\n")
    ids = queue_ids_from_yaml(path).ids
    assert ids == ["default", "mail", "batch"]  # default first; reports-2 is a pull queue
    assert sorted(ids) == sorted(convert(path.read_text()).queues)


@pytest.mark.parametrize(
    "text",
    [
        "queue: [",
        "total_storage_limit: 1G\n",
        "- name: x\n",
        "queue:\n- rate: 5/s\n",
        "queue:\n- name: under_score\n  rate: 5/s\n",
        "queue:\n- name: mail\n  rate: 5/s\n- name: mail\n  rate: 1/s\n",
        "queue:\n- name: mail\n  rate: fast\n",
        "queue:\n- name: mail\n",
        "queue:\n- name: mail\n  rate: 5/s\n  colour: blue\n",
    ],
    ids=[
        "not yaml",
        "no queue list",
        "not a mapping",
        "no name",
        "bad name",
        "twice",
        "bad rate",
        "no rate",
        "unknown field",
    ],
)
def test_a_queue_yaml_that_does_not_convert_is_refused_with_the_converters_message(
    tmp_path: Path, text: str
) -> None:
    path = write(tmp_path, "queue.yaml", text)
    with pytest.raises(QueueYamlError) as expected:
        convert(text)
    with pytest.raises(QueueFileError) as caught:
        queue_ids_from_yaml(path)
    assert str(caught.value) == f"{path}: {expected.value}"
    assert isinstance(caught.value.__cause__, QueueYamlError)


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
    assert queue_ids() == QueueIds(["default"])
    assert queue_ids(["a"]) == QueueIds(["a"])
    combined = queue_ids(["a"], yaml_file, tfvars)
    assert combined.ids == ["a", "default", "mail", "batch", "jobs"]
    assert len(combined.skipped) == 1
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
