"""The module's validation rules, run by Terraform itself on the module's variables.

Terraform cannot download the Google provider here, but a configuration made of the
module's variables.tf alone needs no provider: ``terraform plan`` on it evaluates every
validation rule against the values given.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cloudtasks_deferred.devtools import queue_yaml
from tests.services import require
from tests.terraform import hcl


@pytest.fixture(autouse=True)
def _terraform() -> None:
    require(shutil.which("terraform") is not None, "terraform is not on PATH")


DATA = Path(__file__).resolve().parents[1] / "data" / "queue_yaml"
REQUIRED = {
    "project_id": "my-project",
    "location": "us-central1",
    "runtime_service_account_email": "app@my-project.iam.gserviceaccount.com",
}


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("variables")
    shutil.copy(hcl.MODULE / "variables.tf", directory)
    result = hcl.terraform(f"-chdir={directory}", "init", "-input=false", "-backend=false")
    assert result.returncode == 0, result.stderr
    return directory


def plan(directory: Path, **values: Any) -> tuple[int, str]:
    (directory / "test.tfvars.json").write_text(json.dumps(REQUIRED | values))
    result = hcl.terraform(
        f"-chdir={directory}", "plan", "-input=false", "-no-color", "-var-file=test.tfvars.json"
    )
    # Terraform wraps its messages at 78 columns.
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_files_are_formatted() -> None:
    result = hcl.terraform("fmt", "-check", "-recursive", str(hcl.ROOT))
    assert result.returncode == 0, f"run terraform fmt -recursive terraform: {result.stdout}"


def test_required_values_are_enough(variables_only: Path) -> None:
    code, output = plan(variables_only)
    assert code == 0, output


def test_every_queue_attribute_is_accepted(variables_only: Path) -> None:
    queues = {
        "default": {},
        "mail": {
            "max_dispatches_per_second": 0.5,
            "max_concurrent_dispatches": 10,
            "max_attempts": -1,
            "min_backoff": "0.1s",
            "max_backoff": "3600s",
            "max_doublings": 16,
            "max_retry_duration": "0s",
            "app_engine_routing_override": {"service": "worker", "version": "v2"},
            "logging_sampling_ratio": 1,
        },
    }
    code, output = plan(
        variables_only,
        queues=queues,
        default_queue="mail",
        cloud_run_service_name="app",
        cloud_run_url="https://app-123456789.us-central1.run.app/tasks",
        invoker_service_account_email="invoker@my-project.iam.gserviceaccount.com",
    )
    assert code == 0, output


def test_converted_queue_yaml_is_accepted(variables_only: Path) -> None:
    conversion = queue_yaml.convert((DATA / "full.yaml").read_text())
    (variables_only / "queues.tfvars.json").write_text(queue_yaml.render_json(conversion))
    (variables_only / "test.tfvars.json").write_text(json.dumps(REQUIRED))
    result = hcl.terraform(
        f"-chdir={variables_only}",
        "plan",
        "-input=false",
        "-var-file=test.tfvars.json",
        "-var-file=queues.tfvars.json",
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"project_id": "My Project"}, "project_id must be a project ID"),
        ({"location": ""}, 'location must be a Cloud Tasks location such as "us-central1"'),
        ({"queues": {}}, "queues must hold at least one queue"),
        ({"queues": {"bad_id": {}}}, 'invalid IDs: ["bad_id"]'),
        ({"queues": {"default": {"max_dispatches_per_second": 0}}}, "above 0 and at most 500"),
        ({"queues": {"default": {"max_dispatches_per_second": 501}}}, "above 0 and at most 500"),
        ({"queues": {"default": {"max_concurrent_dispatches": 0}}}, "whole number from 1 to"),
        ({"queues": {"default": {"max_concurrent_dispatches": 1.5}}}, "whole number from 1 to"),
        ({"queues": {"default": {"max_attempts": -2}}}, "max_attempts must be a whole number >="),
        ({"queues": {"default": {"max_doublings": -1}}}, "max_doublings must be a whole number"),
        ({"queues": {"default": {"min_backoff": "10"}}}, 'followed by "s"'),
        ({"queues": {"default": {"max_backoff": "1h"}}}, 'followed by "s"'),
        ({"queues": {"default": {"max_retry_duration": "1.0000000001s"}}}, 'followed by "s"'),
        ({"queues": {"default": {"logging_sampling_ratio": 1.5}}}, "from 0 (log nothing) to 1"),
        ({"queues": {"default": {"app_engine_routing_override": {}}}}, "at least one of service"),
        ({"default_queue": "mail"}, 'default_queue "mail" is not one of the queues'),
        ({"runtime_service_account_email": "me@example.com"}, "must be a service account email"),
        ({"invoker_service_account_email": "invoker"}, "must be a service account email"),
        (
            {
                "invoker_service_account_email": "invoker@my-project.iam.gserviceaccount.com",
                "create_invoker_service_account": False,
            },
            "not both",
        ),
        ({"invoker_account_id": "x"}, "invoker_account_id must be 6 to 30"),
        ({"cloud_run_service_name": "My_Service"}, "must be a Cloud Run service name"),
        (
            {"cloud_run_service_name": "app", "create_invoker_service_account": False},
            "A Cloud Run service needs an invoker",
        ),
        ({"cloud_run_location": "US"}, "cloud_run_location must be a region"),
        ({"cloud_run_url": "http://app.example"}, "cloud_run_url must be an https URL"),
        ({"cloud_run_url": "https://app.example/?a=b"}, "without ?query or #fragment"),
        (
            {"cloud_run_url": "https://app.example", "create_invoker_service_account": False},
            "HTTP targets carry the invoker's OIDC token",
        ),
    ],
)
def test_invalid_values_are_refused_with_a_message(
    variables_only: Path, values: dict[str, Any], message: str
) -> None:
    code, output = plan(variables_only, **values)
    assert code != 0
    assert message in output, output
