"""queue.yaml -> the Terraform module's queues, and the `queue-yaml` command."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest

from cloudtasks_deferred import errors
from cloudtasks_deferred.devtools import cli
from cloudtasks_deferred.devtools.queue_yaml import QueueYamlError, convert, render_hcl, render_json
from tests.terraform import hcl

DATA = Path(__file__).resolve().parents[1] / "data" / "queue_yaml"
FULL = DATA / "full.yaml"
HCL_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


def only_queue(text: str) -> dict[str, Any]:
    """The converted attributes of the one queue, named ``q``, that ``text`` defines."""
    return convert("queue:\n- name: q\n" + text).queues["q"]


def test_full_file_converts_every_field() -> None:
    conversion = convert(FULL.read_text())
    assert conversion.queues == {
        "default": {"max_dispatches_per_second": 5, "max_attempts": -1},
        "mail": {
            "max_dispatches_per_second": 1.666666667,
            "max_concurrent_dispatches": 10,
            "max_attempts": 8,
            "min_backoff": "0.1s",
            "max_backoff": "200s",
            "max_doublings": 3,
            "max_retry_duration": "172800s",
            "app_engine_routing_override": {"service": "worker"},
        },
        "reports": {
            "max_dispatches_per_second": 0.002777778,
            "max_attempts": -1,
            "min_backoff": "30s",
            "max_retry_duration": "5400s",
            "app_engine_routing_override": {"service": "batch", "version": "v2"},
        },
        "nightly-cleanup": {
            "max_dispatches_per_second": 0.000011574,
            "max_attempts": 1,
            "min_backoff": "0.05s",
            "max_backoff": "0.05s",
            "max_retry_duration": "1800s",
        },
        "import-feed": {
            "max_dispatches_per_second": 2.5,
            "max_concurrent_dispatches": 5000,
            "max_attempts": -1,
            "min_backoff": "7200s",
            "max_backoff": "7200s",
            "max_retry_duration": "10s",
        },
    }


def test_everything_not_carried_over_is_warned_about() -> None:
    warnings = convert(FULL.read_text()).warnings
    assert [warning.split(":")[0] for warning in warnings] == [
        "total_storage_limit",
        "resume_paused_queues",
        "application",
        "default",
        "mail",
        "import-feed",
        "pull-jobs",
    ]
    text = "\n".join(warnings)
    assert "default: bucket_size 5 not converted: Cloud Tasks derives the max burst" in text
    assert "mail: bucket_size 40 not converted" in text
    assert "import-feed: acl [{'user_email': 'importer@example.com'}" in text
    assert "grant roles/cloudtasks.enqueuer on the queue" in text
    assert "pull-jobs: not converted: pull queues" in text
    assert "total_storage_limit: not converted: Cloud Tasks has no storage limit" in text


def test_pull_queues_are_left_out_with_a_warning() -> None:
    conversion = convert((DATA / "pull_queue.yaml").read_text())
    assert list(conversion.queues) == ["default"]
    assert conversion.warnings == (
        "batch-pull: not converted: pull queues exist only in App Engine's task queue API; "
        "the Cloud Tasks v2 API (Terraform's) and deferred tasks use push queues.",
    )
    assert conversion.pull_queues == ("batch-pull",)


def test_a_pull_queue_and_a_push_queue_may_not_share_a_name() -> None:
    with pytest.raises(QueueYamlError, match="queue 'q' is defined twice"):
        convert("queue:\n- name: q\n  mode: pull\n- name: q\n  rate: 1/s\n")


def test_implicit_default_queue_is_added_with_a_warning() -> None:
    conversion = convert((DATA / "no_default.yaml").read_text())
    assert conversion.queues == {
        "mail": {"max_dispatches_per_second": 1, "max_attempts": -1},
        "default": {"max_dispatches_per_second": 5, "max_attempts": -1},
    }
    assert conversion.warnings[0].startswith("default: added at 5/s with unlimited attempts")


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [
        ("5/s", 5),
        ("2.5/s", 2.5),
        ("500/s", 500),
        ("60/m", 1),
        ("100/m", 1.666666667),
        ("10/h", 0.002777778),
        ("1/d", 0.000011574),
        (".5/s", 0.5),
    ],
)
def test_rate_is_dispatches_per_second(rate: str, per_second: float) -> None:
    assert only_queue(f"  rate: {rate}\n")["max_dispatches_per_second"] == per_second


@pytest.mark.parametrize(("limit", "attempts"), [(None, -1), (0, 1), (7, 8)])
def test_task_retry_limit_counts_retries_not_attempts(limit: int | None, attempts: int) -> None:
    retry = "" if limit is None else f"  retry_parameters:\n    task_retry_limit: {limit}\n"
    assert only_queue("  rate: 1/s\n" + retry)["max_attempts"] == attempts


@pytest.mark.parametrize(
    ("age", "duration"),
    [
        ("2d", "172800s"),
        ("1h", "3600s"),
        ("1.5h", "5400s"),
        ("30m", "1800s"),
        ("0.5m", "30s"),
        ("10s", "10s"),
        ("1.9s", "1s"),  # truncated to the second, as gcloud does
    ],
)
def test_task_age_limit_is_max_retry_duration(age: str, duration: str) -> None:
    queue = only_queue(f"  rate: 1/s\n  retry_parameters:\n    task_age_limit: {age}\n")
    assert queue["max_retry_duration"] == duration


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("min_backoff_seconds: 0.1", {"min_backoff": "0.1s"}),
        ("max_backoff_seconds: 200", {"max_backoff": "200s"}),
        (
            "min_backoff_seconds: 1, max_backoff_seconds: 1",
            {"min_backoff": "1s", "max_backoff": "1s"},
        ),
        # A lone bound past Cloud Tasks' default for the other one (0.1s to 3600s)
        # drags that one along, as App Engine does.
        ("min_backoff_seconds: 7200", {"min_backoff": "7200s", "max_backoff": "7200s"}),
        ("max_backoff_seconds: 0.05", {"min_backoff": "0.05s", "max_backoff": "0.05s"}),
        ("max_doublings: 0", {"max_doublings": 0}),
    ],
)
def test_backoff_parameters(params: str, expected: dict[str, object]) -> None:
    queue = only_queue(f"  rate: 1/s\n  retry_parameters: {{{params}}}\n")
    assert {key: queue[key] for key in expected} == expected
    assert not ({"min_backoff", "max_backoff", "max_doublings"} - set(expected)) & set(queue)


@pytest.mark.parametrize(
    ("target", "routing"),
    [("worker", {"service": "worker"}), ("v2.worker", {"service": "worker", "version": "v2"})],
)
def test_target_is_the_routing_override(target: str, routing: dict[str, str]) -> None:
    queue = only_queue(f"  rate: 1/s\n  target: {target}\n")
    assert queue["app_engine_routing_override"] == routing


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("bad_rate_unit.yaml", "queue 'mail': rate '10/w' is invalid; expected N/s, N/m, N/h or"),
        (
            "negative_retry_limit.yaml",
            "queue 'mail': retry_parameters.task_retry_limit -1 is invalid; "
            "expected a whole number >= 0",
        ),
        (
            "bad_age_limit.yaml",
            "queue 'reports': retry_parameters.task_age_limit '2 days' is invalid; "
            "expected at least 1s: a number and s, m, h or d",
        ),
        (
            "unknown_field.yaml",
            "unknown field(s) ['max_concurent_requests'] in queue 'mail'; accepted: ['acl',",
        ),
        ("missing_name.yaml", "queue entry #2 has no name"),
        ("duplicate_names.yaml", "queue 'mail' is defined twice; queue names must be unique"),
    ],
)
def test_invalid_files_are_refused(file: str, message: str) -> None:
    with pytest.raises(QueueYamlError) as caught:
        convert((DATA / file).read_text())
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("rate: 5", "rate 5 is invalid; expected N/s, N/m, N/h or N/d, at most 500/s"),
        ("rate: fast", "rate 'fast' is invalid"),
        ("rate: -1/s", "rate '-1/s' is invalid"),
        ("rate: 501/s", "rate '501/s' is invalid; expected N/s, N/m, N/h or N/d, at most 500/s"),
        ("rate: 0", "rate 0 pauses the queue, which the module cannot express"),
        ("rate: 0/s", "rate '0/s' pauses the queue"),
        ("target: worker", "rate is required for push queues, e.g. rate: 5/s"),
        ("bucket_size: -1", "bucket_size -1 is invalid; expected a whole number from 0 to 500"),
        ("bucket_size: 501", "bucket_size 501 is invalid"),
        ("bucket_size: '5'", "bucket_size '5' is invalid"),
        ("max_concurrent_requests: 0", "max_concurrent_requests 0 is invalid; expected a whole"),
        ("max_concurrent_requests: -5", "max_concurrent_requests -5 is invalid"),
        ("max_concurrent_requests: 5001", "number from 1 to 5000"),
        ("max_concurrent_requests: 2.5", "max_concurrent_requests 2.5 is invalid"),
        ("retry_parameters: {task_retry_limit: '3'}", "task_retry_limit '3' is invalid"),
        ("retry_parameters: {task_retry_limit: true}", "task_retry_limit True is invalid"),
        ("retry_parameters: {task_age_limit: 2x}", "task_age_limit '2x' is invalid"),
        ("retry_parameters: {task_age_limit: 0s}", "'0s' is invalid; expected at least 1s"),
        ("retry_parameters: {task_age_limit: 0.5s}", "task_age_limit '0.5s' is invalid"),
        ("retry_parameters: {task_age_limit: -1d}", "task_age_limit '-1d' is invalid"),
        ("retry_parameters: {task_age_limit: 10}", "task_age_limit 10 is invalid"),
        ("retry_parameters: {min_backoff_seconds: -1}", "min_backoff_seconds -1 is invalid"),
        ("retry_parameters: {min_backoff_seconds: x}", "expected a number of seconds >= 0"),
        ("retry_parameters: {min_backoff_seconds: .inf}", "min_backoff_seconds inf is invalid"),
        ("retry_parameters: {max_backoff_seconds: .nan}", "max_backoff_seconds nan is invalid"),
        ("retry_parameters: {max_backoff_seconds: -0.5}", "max_backoff_seconds -0.5 is invalid"),
        (
            "retry_parameters: {min_backoff_seconds: 10, max_backoff_seconds: 5}",
            "min_backoff_seconds (10) is greater than max_backoff_seconds (5)",
        ),
        ("retry_parameters: {max_doublings: -1}", "max_doublings -1 is invalid; expected a whole"),
        ("retry_parameters: {task_retry_limt: 3}", "unknown field(s) ['task_retry_limt'] in"),
        ("retry_parameters: [3]", "retry_parameters [3] is invalid; expected a mapping of"),
        ("target: Worker", "target 'Worker' is invalid; expected an App Engine service or"),
        ("target: a.b.c", "target 'a.b.c' is invalid"),
        ("target: -worker", "target '-worker' is invalid"),
        ("mode: later", "mode 'later' is invalid; expected push or pull"),
    ],
)
def test_invalid_values_name_the_queue_field_value_and_fix(entry: str, message: str) -> None:
    rate = "" if entry.startswith("rate") or "rate is required" in message else "rate: 1/s, "
    with pytest.raises(QueueYamlError) as caught:
        convert(f"queue:\n- {{name: q, {rate}{entry}}}\n")
    assert "queue 'q'" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a mapping with a `queue:` list at the top level"),
        ("- name: q", "expected a mapping with a `queue:` list at the top level"),
        (
            "queue: [",
            "not valid YAML at line 1, column 9: expected the node content, but found "
            "'<stream end>' (while parsing a flow node)",
        ),
        ("queue:\n- name: x\n\trate: 1/s", "not valid YAML at line 3, column 1: found "),
        ("\x00", "not valid YAML: unacceptable character #x0000"),
        ("[" * 5000 + "]" * 5000, "its YAML nests too deeply"),
        ("total_storage_limit: 1G", "no queues: expected a `queue:` list"),
        ("queue: []", "no queues"),
        ("queue: [default]", "queue entry #1 must be a mapping with a name"),
        ("queues: []", "unknown field(s) ['queues'] in the top level; accepted: ['application',"),
        (
            "queue: [{name: 123, rate: 1/s}]",
            "queue entry #1: name 123 is invalid; expected 1 to 100",
        ),
        ("queue: [{name: bad_name, rate: 1/s}]", "name 'bad_name' is invalid"),
        (f"queue: [{{name: {'q' * 101}, rate: 1/s}}]", "is invalid; expected 1 to 100 letters"),
    ],
)
def test_invalid_documents_are_refused(text: str, message: str) -> None:
    with pytest.raises(QueueYamlError) as caught:
        convert(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "<unicode string>" not in str(caught.value)


def test_errors_are_value_errors_in_the_library_tree() -> None:
    assert issubclass(QueueYamlError, errors.Error)
    assert issubclass(QueueYamlError, ValueError)


def test_json_has_the_shape_of_the_module_variable() -> None:
    variable = hcl.load(hcl.MODULE)["variable"]["queues"]
    queue_type = hcl.parse_type(variable["type"]).element
    assert queue_type is not None
    rendered = json.loads(render_json(convert(FULL.read_text())))
    assert list(rendered) == ["queues"]
    for queue in rendered["queues"].values():
        for key, value in queue.items():
            attribute = queue_type.attributes[key].type
            if attribute.kind == "object":
                assert set(value) <= set(attribute.attributes), key
            elif attribute.kind == "number":
                assert type(value) in (int, float), key
            else:
                assert attribute.kind == "string", key
                assert isinstance(value, str), key


def test_hcl_parses_to_the_same_queues_as_json() -> None:
    conversion = convert(FULL.read_text())
    parsed = hcl2.loads(render_hcl(conversion), serialization_options=HCL_OPTIONS)
    assert parsed == json.loads(render_json(conversion))


def test_hcl_keys_that_are_not_identifiers_are_quoted() -> None:
    rendered = render_hcl(convert("queue: [{name: 1queue, rate: 1/s}]"))
    assert '"1queue" = {' in rendered
    assert hcl2.loads(rendered, serialization_options=HCL_OPTIONS)["queues"]["1queue"]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="needs terraform")
def test_hcl_is_laid_out_as_terraform_fmt_does() -> None:
    rendered = render_hcl(convert(FULL.read_text()))
    result = hcl.terraform("fmt", "-", stdin=rendered)
    assert result.returncode == 0, result.stderr
    assert result.stdout == rendered


# The command line.


def test_command_writes_json_to_stdout_and_warnings_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["queue-yaml", str(FULL)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(render_json(convert(FULL.read_text())))
    assert "cloudtasks-deferred queue-yaml: warning: pull-jobs: not converted" in err
    assert len(err.splitlines()) == len(convert(FULL.read_text()).warnings)


def test_command_writes_hcl(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["queue-yaml", str(FULL), "--format", "hcl"]) == 0
    assert capsys.readouterr().out == render_hcl(convert(FULL.read_text()))


def test_command_writes_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "queues.auto.tfvars.json"
    assert cli.main(["queue-yaml", str(FULL), "--output", str(target)]) == 0
    assert json.loads(target.read_text())["queues"]["mail"]["max_attempts"] == 8
    assert capsys.readouterr().out == ""


def test_command_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("queue: [{name: default, rate: 2/s}]"))
    assert cli.main(["queue-yaml", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "queues": {"default": {"max_dispatches_per_second": 2, "max_attempts": -1}}
    }
    assert err == ""


def test_command_refuses_invalid_input_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "bad_rate_unit.yaml"
    assert cli.main(["queue-yaml", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"cloudtasks-deferred queue-yaml: {path}: queue 'mail': rate '10/w' is invalid; "
        "expected N/s, N/m, N/h or N/d, at most 500/s\n"
    )


def test_command_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["queue-yaml", str(tmp_path / "queue.yaml")])
    assert caught.value.code == 2
    assert "queue.yaml does not exist" in capsys.readouterr().err


def test_command_reports_an_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "queue.yaml"
    path.write_bytes(b"queue: \xff\n")
    assert cli.main(["queue-yaml", str(path)]) == 1
    assert capsys.readouterr().err.startswith(
        f"cloudtasks-deferred queue-yaml: cannot read {path}: "
    )


def test_command_reports_an_unwritable_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["queue-yaml", str(FULL), "--output", str(tmp_path / "no" / "f")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["queue-yaml", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "queue.yaml" in out
    assert "--format {json,hcl}" in out


def test_command_refuses_an_unknown_format() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["queue-yaml", str(FULL), "--format", "yaml"])
    assert caught.value.code == 2


def test_importing_the_package_and_the_cli_loads_no_yaml() -> None:
    code = (
        "import sys, cloudtasks_deferred, cloudtasks_deferred.devtools.cli; "
        "print('yaml' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
