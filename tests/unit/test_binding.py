"""Each rule of the replay binding on its own (``payload/binding.py``): destination, age, skew.

The handler's tests see a binding failure as a 403; these pin each rule at its bound:
the value just inside is accepted and the value one second outside is refused, with
the message the log shows. Values are spelled out: the 32-day default and the
5-minute skew are the documented figures (SECURITY.md), not read back from the module.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cloudtasks_deferred.payload import binding
from cloudtasks_deferred.payload.binding import app_engine_destination, bind, check
from cloudtasks_deferred.payload.frame import PayloadSignatureError

HERE = "https://worker.example.test"
NOW = 1_700_000_000
UNBOUND_WARNING = (
    "accepted a payload signed without a destination (by release 0.1); "
    "0.3 will refuse them (CLOUDTASKS_DEFERRED_REQUIRE_BOUND_PAYLOADS=true now)"
)


def check_at(metadata: dict[str, Any], *, max_age: float = 3600, require: bool = False) -> None:
    check(metadata, destinations={HERE}, max_age=max_age, now=NOW, require=require)


def refusal(metadata: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(PayloadSignatureError) as raised:
        check_at(metadata, **kwargs)
    return str(raised.value)


# --- the documented figures ------------------------------------------------------------


def test_the_default_maximum_age_is_thirty_two_days() -> None:
    assert binding.DEFAULT_MAX_AGE == 2_764_800


def test_the_clock_skew_allowance_is_five_minutes() -> None:
    assert binding.CLOCK_SKEW_SECONDS == 300


def test_the_metadata_keys_are_dst_and_iat() -> None:
    # Payloads already queued carry these keys: renaming one unbinds them all.
    assert (binding.DESTINATION, binding.ISSUED_AT) == ("dst", "iat")


# --- bind and the App Engine destination -------------------------------------------------


def test_bind_adds_the_destination_and_the_issue_time_in_whole_seconds() -> None:
    metadata = {"retry": 1}
    bound = bind(metadata, HERE, 1_700_000_000.9)
    assert bound == {"retry": 1, "dst": HERE, "iat": 1_700_000_000}
    assert type(bound["iat"]) is int
    assert metadata == {"retry": 1}


def test_app_engine_destination_names_project_and_service() -> None:
    assert app_engine_destination("my-project", "worker") == "app-engine:my-project/worker"


def test_app_engine_destination_without_a_service_is_the_default_service() -> None:
    assert app_engine_destination("my-project", None) == "app-engine:my-project/default"
    assert app_engine_destination("my-project", "") == "app-engine:my-project/default"


# --- destination ------------------------------------------------------------------------


def test_a_payload_bound_here_and_issued_now_is_accepted() -> None:
    assert check_at({"dst": HERE, "iat": NOW}) is None


def test_a_payload_bound_for_another_service_is_refused_naming_it() -> None:
    assert refusal({"dst": "https://other.example.test", "iat": NOW}) == (
        "the payload is signed for 'https://other.example.test', not for this service "
        "(CLOUDTASKS_DEFERRED_AUDIENCE, or the App Engine service)"
    )


def test_a_destination_that_is_not_a_string_is_shown_as_nowhere() -> None:
    assert refusal({"dst": [HERE], "iat": NOW}) == (
        "the payload is signed for 'nowhere', not for this service "
        "(CLOUDTASKS_DEFERRED_AUDIENCE, or the App Engine service)"
    )


def test_a_payload_with_an_issue_time_and_no_destination_is_refused() -> None:
    # Only a payload with neither key is a release-0.1 payload; one key alone is forged.
    assert refusal({"iat": NOW}) == (
        "the payload is signed for 'nowhere', not for this service "
        "(CLOUDTASKS_DEFERRED_AUDIENCE, or the App Engine service)"
    )


def test_the_refused_destination_is_shown_cut_to_200_characters() -> None:
    message = refusal({"dst": "d" * 300, "iat": NOW})
    assert message == (
        f"the payload is signed for '{'d' * 200}', not for this service "
        "(CLOUDTASKS_DEFERRED_AUDIENCE, or the App Engine service)"
    )


# --- issue time -------------------------------------------------------------------------


def test_a_payload_with_a_destination_and_no_issue_time_is_refused() -> None:
    assert refusal({"dst": HERE}) == "the payload's signed issue time is not a number"


@pytest.mark.parametrize("issued_at", [True, False, float(NOW), str(NOW)])
def test_an_issue_time_that_is_not_an_integer_is_refused(issued_at: object) -> None:
    assert refusal({"dst": HERE, "iat": issued_at}) == (
        "the payload's signed issue time is not a number"
    )


def test_an_issue_time_five_minutes_ahead_is_accepted() -> None:
    assert check_at({"dst": HERE, "iat": NOW + 300}) is None


def test_an_issue_time_more_than_five_minutes_ahead_is_refused() -> None:
    assert refusal({"dst": HERE, "iat": NOW + 301}) == (
        "the payload's signed issue time is in the future"
    )


def test_a_payload_exactly_the_maximum_age_old_is_accepted() -> None:
    assert check_at({"dst": HERE, "iat": NOW - 3600}, max_age=3600) is None


def test_a_payload_one_second_older_than_the_maximum_age_is_refused() -> None:
    assert refusal({"dst": HERE, "iat": NOW - 3601}, max_age=3600) == (
        "the payload was signed more than 3600 s ago (CLOUDTASKS_DEFERRED_PAYLOAD_MAX_AGE)"
    )


# --- payloads signed by release 0.1 (no dst, no iat) ------------------------------------


def test_an_unbound_payload_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudtasks_deferred.payload.binding"):
        assert check_at({"retry": 1}) is None
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("cloudtasks_deferred.payload.binding", logging.WARNING, UNBOUND_WARNING)
    ]


def test_a_bound_payload_is_accepted_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        check_at({"dst": HERE, "iat": NOW})
    assert caplog.records == []


def test_requiring_bound_payloads_refuses_an_unbound_one() -> None:
    assert refusal({}, require=True) == (
        "the payload is signed without a destination (by release 0.1); "
        "CLOUDTASKS_DEFERRED_REQUIRE_BOUND_PAYLOADS refuses such payloads"
    )


def test_requiring_bound_payloads_accepts_a_bound_one() -> None:
    assert check_at({"dst": HERE, "iat": NOW}, require=True) is None
