"""The Terraform module and its examples, read with python-hcl2.

Terraform cannot download the Google provider here, so these tests read the HCL: the
resources, their roles and scopes, the variables' contracts and the outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.terraform import hcl

ENVIRONMENT = (
    "GOOGLE_CLOUD_PROJECT",
    "CLOUDTASKS_DEFERRED_LOCATION",
    "CLOUDTASKS_DEFERRED_QUEUE",
    "CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT",
    "CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS",
    "CLOUDTASKS_DEFERRED_BASE_URL",
    "CLOUDTASKS_DEFERRED_AUDIENCE",
)
EXAMPLES = ("cloud_run", "app_engine")
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


@pytest.fixture(scope="module")
def module() -> dict[str, Any]:
    return hcl.load(hcl.MODULE)


@pytest.fixture(scope="module")
def resources(module: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return module["resource"]


@pytest.fixture(scope="module")
def variables(module: dict[str, Any]) -> dict[str, Any]:
    return module["variable"]


def all_documents() -> dict[str, dict[str, Any]]:
    documents = {"module": hcl.load(hcl.MODULE)}
    documents.update({name: hcl.load(hcl.EXAMPLES / name) for name in EXAMPLES})
    return documents


def kinds(type_: hcl.Type) -> Iterator[str]:
    yield type_.kind
    if type_.element is not None:
        yield from kinds(type_.element)
    for attribute in type_.attributes.values():
        yield from kinds(attribute.type)


def conditions(variable: dict[str, Any]) -> list[str]:
    return [rule["condition"] for rule in variable.get("validation", [])]


def test_module_has_its_files() -> None:
    for name in ("versions.tf", "variables.tf", "main.tf", "outputs.tf", "README.md"):
        assert (hcl.MODULE / name).is_file(), name


def test_module_requires_terraform_and_the_google_provider(module: dict[str, Any]) -> None:
    (terraform,) = module["terraform"]
    assert terraform["required_version"] == ">= 1.9"  # validations that read other variables
    (providers,) = terraform["required_providers"]
    assert providers["google"]["source"] == "hashicorp/google"


def test_every_variable_has_a_description_and_a_precise_type(variables: dict[str, Any]) -> None:
    for name, variable in variables.items():
        assert variable.get("description", "").strip(), f"{name} has no description"
        assert "type" in variable, f"{name} has no type"
        assert "any" not in kinds(hcl.parse_type(variable["type"])), f"{name} is typed any"


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("project_id", ["regex"]),
        ("location", ["regex"]),
        ("default_queue", ["contains(keys(var.queues)"]),
        ("runtime_service_account_email", ["gserviceaccount"]),
        ("invoker_service_account_email", ["gserviceaccount"]),
        ("invoker_account_id", ["regex"]),
        ("cloud_run_service_name", ["regex"]),
        ("cloud_run_location", ["regex"]),
        ("cloud_run_url", ["^https://"]),
        (
            "queues",
            [
                "^[A-Za-z0-9-]{1,100}$",
                "max_dispatches_per_second > 0",
                "max_concurrent_dispatches >= 1",
                "max_attempts >= -1",
                "max_doublings >= 0",
                # The provider's duration format: seconds, up to nine decimals, "s".
                '"^[0-9]+(\\\\.[0-9]{1,9})?s$"',
                "logging_sampling_ratio >= 0 && q.logging_sampling_ratio <= 1",
                "app_engine_routing_override",
            ],
        ),
    ],
)
def test_values_that_can_be_wrong_are_validated(
    variables: dict[str, Any], name: str, fragments: list[str]
) -> None:
    rules = variables[name]["validation"]
    assert all(rule["error_message"].strip() for rule in rules)
    for fragment in fragments:
        assert any(fragment in condition for condition in conditions(variables[name])), fragment


def test_queue_attributes_are_optional(variables: dict[str, Any]) -> None:
    queues = hcl.parse_type(variables["queues"]["type"])
    assert queues.kind == "map"
    assert queues.element is not None
    attributes = queues.element.attributes
    assert set(attributes) == {
        "max_dispatches_per_second",
        "max_concurrent_dispatches",
        "max_attempts",
        "min_backoff",
        "max_backoff",
        "max_doublings",
        "max_retry_duration",
        "app_engine_routing_override",
        "logging_sampling_ratio",
    }
    assert all(attribute.optional for attribute in attributes.values())
    routing = attributes["app_engine_routing_override"].type
    assert set(routing.attributes) == {"service", "version", "instance"}


def test_queues_are_created_from_the_map(resources: dict[str, Any]) -> None:
    queue = resources["google_cloud_tasks_queue"]["this"]
    assert queue["for_each"] == "${var.queues}"
    assert queue["name"] == "${each.key}"
    (rate_limits,) = queue["rate_limits"]
    assert set(rate_limits) == {"max_dispatches_per_second", "max_concurrent_dispatches"}
    (retry,) = queue["retry_config"]
    assert set(retry) == {
        "max_attempts",
        "min_backoff",
        "max_backoff",
        "max_doublings",
        "max_retry_duration",
    }
    dynamic = {name: block for item in queue["dynamic"] for name, block in item.items()}
    (routing,) = dynamic["app_engine_routing_override"]["content"]
    assert set(routing) == {"service", "version", "instance"}
    (logging,) = dynamic["stackdriver_logging_config"]["content"]
    assert set(logging) == {"sampling_ratio"}


def test_runtime_may_enqueue_on_each_queue_not_the_project(resources: dict[str, Any]) -> None:
    grant = resources["google_cloud_tasks_queue_iam_member"]["runtime_enqueuer"]
    assert grant["for_each"] == "${google_cloud_tasks_queue.this}"
    assert grant["name"] == "${each.value.name}"
    assert grant["role"] == "roles/cloudtasks.enqueuer"
    assert grant["member"] == "${local.runtime_member}"


def test_runtime_may_act_as_the_invoker_only(
    module: dict[str, Any], resources: dict[str, Any]
) -> None:
    grant = resources["google_service_account_iam_member"]["runtime_acts_as_invoker"]
    assert grant["role"] == "roles/iam.serviceAccountUser"
    assert grant["member"] == "${local.runtime_member}"
    assert "${local.invoker_email}" in grant["service_account_id"]
    assert module["locals"]["runtime_member"] == (
        "serviceAccount:${var.runtime_service_account_email}"
    )


def test_invoker_is_created_or_given(module: dict[str, Any], resources: dict[str, Any]) -> None:
    invoker = resources["google_service_account"]["invoker"]
    assert invoker["count"] == "${local.create_invoker ? 1 : 0}"
    assert invoker["account_id"] == "${var.invoker_account_id}"
    email = module["locals"]["invoker_email"]
    assert "google_service_account.invoker[0].email" in email
    assert "var.invoker_service_account_email" in email


def test_invoker_may_call_the_cloud_run_service(resources: dict[str, Any]) -> None:
    grant = resources["google_cloud_run_v2_service_iam_member"]["invoker"]
    assert grant["count"] == "${var.cloud_run_service_name == null ? 0 : 1}"
    assert grant["name"] == "${var.cloud_run_service_name}"
    assert grant["role"] == "roles/run.invoker"
    assert grant["member"] == "serviceAccount:${local.invoker_email}"


def test_apis_are_enabled_on_request_and_never_disabled(
    module: dict[str, Any], resources: dict[str, Any]
) -> None:
    service = resources["google_project_service"]["this"]
    assert service["for_each"] == "${local.apis}"
    assert service["disable_on_destroy"] is False
    apis = module["locals"]["apis"]
    assert apis.startswith("${var.enable_apis ?")
    for api in ("cloudtasks.googleapis.com", "iam.googleapis.com", "run.googleapis.com"):
        assert api in apis


def test_no_role_is_granted_on_the_project() -> None:
    for name, document in all_documents().items():
        for type_ in document.get("resource", {}):
            assert not type_.startswith(("google_project_iam", "google_organization_iam")), name


def test_enqueuer_is_granted_only_per_queue() -> None:
    for name, document in all_documents().items():
        for type_, named in document.get("resource", {}).items():
            for body in named.values():
                if "roles/cloudtasks.enqueuer" in hcl.strings(body):
                    assert type_ == "google_cloud_tasks_queue_iam_member", (name, type_)


def test_nothing_is_public() -> None:
    for name, document in all_documents().items():
        for text in hcl.strings(document):
            for member in PUBLIC_MEMBERS:
                assert member not in text, (name, text)


def test_outputs_expose_queues_and_the_environment(module: dict[str, Any]) -> None:
    outputs = module["output"]
    assert {"queue_names", "queue_ids", "environment", "invoker_service_account_email"} <= set(
        outputs
    )
    assert all(output.get("description") for output in outputs.values())
    environment = outputs["environment"]["value"]
    for name in ENVIRONMENT:
        assert f"{name} =" in environment, name
    # The audience is the URL's origin: scheme and host, no path or query.
    assert 'CLOUDTASKS_DEFERRED_AUDIENCE = regex("^https://[^/?#]+", var.cloud_run_url)' in (
        environment
    )


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_use_the_module(example: str) -> None:
    document = hcl.load(hcl.EXAMPLES / example)
    (call,) = document["module"].values()
    assert call["source"] == "../../modules/cloudtasks_deferred"
    for name, variable in document.get("variable", {}).items():
        assert variable.get("description"), f"{example}: {name}"


def test_cloud_run_example_wires_the_environment_into_a_private_service() -> None:
    document = hcl.load(hcl.EXAMPLES / "cloud_run")
    service = document["resource"]["google_cloud_run_v2_service"]["app"]
    assert service["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    (template,) = service["template"]
    assert template["service_account"] == "${google_service_account.runtime.email}"
    (container,) = template["containers"]
    (env,) = container["dynamic"]
    assert env["env"]["for_each"] == "${module.cloudtasks_deferred.environment}"
    call = document["module"]["cloudtasks_deferred"]
    assert call["runtime_service_account_email"] == "${google_service_account.runtime.email}"
    assert call["cloud_run_service_name"] == "${google_cloud_run_v2_service.app.name}"
    assert call["cloud_run_url"] == "${local.service_url}"


def test_app_engine_example_routes_queues_to_services() -> None:
    document = hcl.load(hcl.EXAMPLES / "app_engine")
    call = document["module"]["cloudtasks_deferred"]
    assert call["create_invoker_service_account"] is False
    assert "cloud_run_url" not in call
    queues = document["variable"]["queues"]["default"]
    assert any("app_engine_routing_override" in queue for queue in queues.values())
