"""Settings: parsing the environment, defaults, platform detection and bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cloudtasks_deferred import ConfigurationError, Settings
from cloudtasks_deferred.payload.frame import SigningKey
from cloudtasks_deferred.settings import GOOGLE_OIDC_CERTS_URL, Platform, origin, queue_path


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.project is None
    assert settings.location is None
    assert settings.queue == "default"
    assert settings.base_url is None
    assert settings.oidc_certs_url == GOOGLE_OIDC_CERTS_URL
    assert settings.platform is Platform.LOCAL
    assert settings.dev_mode is False
    assert settings.dev_key_file is None
    assert settings.ndb is None
    assert settings.effective_audiences == ()
    assert settings.effective_invokers == ()


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": "my-project",
            "CLOUDTASKS_DEFERRED_LOCATION": "europe-west1",
            "CLOUDTASKS_DEFERRED_QUEUE": "mail",
            "CLOUDTASKS_DEFERRED_BASE_URL": "https://svc-abc-ew.a.run.app/",
            "CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT": "tasks@my-project.iam.gserviceaccount.com",
            "CLOUDTASKS_DEFERRED_AUDIENCE": "https://tasks.example.com, https://svc.example",
            "CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS": "a@x.iam.gserviceaccount.com,b@y.com",
            "CLOUDTASKS_DEFERRED_OIDC_CERTS_URL": "http://127.0.0.1:9/certs",
            "CLOUD_TASKS_EMULATOR_HOST": "127.0.0.1:8123",
            "CLOUDTASKS_DEFERRED_DEV_MODE": "yes",
            "CLOUDTASKS_DEFERRED_DEV_KEY_FILE": "/tmp/key.pem",
            "CLOUDTASKS_DEFERRED_NDB": "off",
        }
    )
    assert settings == Settings(
        project="my-project",
        location="europe-west1",
        queue="mail",
        base_url="https://svc-abc-ew.a.run.app/",
        service_account="tasks@my-project.iam.gserviceaccount.com",
        audiences=("https://tasks.example.com", "https://svc.example"),
        allowed_invokers=("a@x.iam.gserviceaccount.com", "b@y.com"),
        oidc_certs_url="http://127.0.0.1:9/certs",
        emulator_host="127.0.0.1:8123",
        dev_mode=True,
        dev_key_file=Path("/tmp/key.pem"),
        ndb=False,
    )


def test_empty_values_count_as_unset() -> None:
    settings = Settings.from_env({"CLOUDTASKS_DEFERRED_QUEUE": "", "GOOGLE_CLOUD_PROJECT": " "})
    assert settings.queue == "default"
    assert settings.project is None


@pytest.mark.parametrize(
    ("environ", "platform"),
    [
        ({"GAE_ENV": "standard", "GAE_SERVICE": "default"}, Platform.APP_ENGINE),
        ({"GAE_ENV": "localdev"}, Platform.LOCAL),
        ({"K_SERVICE": "svc", "K_REVISION": "svc-0001"}, Platform.CLOUD_RUN),
        ({"CLOUD_RUN_JOB": "job"}, Platform.CLOUD_RUN),
        ({}, Platform.LOCAL),
    ],
)
def test_platform_detection(environ: dict[str, str], platform: Platform) -> None:
    assert Settings.from_env(environ).platform is platform


def test_app_engine_variables() -> None:
    settings = Settings.from_env(
        {
            "GAE_ENV": "standard",
            "GAE_SERVICE": "worker",
            "GAE_VERSION": "20240101t000000",
            "GAE_APPLICATION": "s~legacy-project",
        }
    )
    assert settings.app_engine_service == "worker"
    assert settings.app_engine_version == "20240101t000000"
    assert settings.project == "legacy-project"


def test_google_cloud_project_wins_over_gae_application() -> None:
    environ = {"GAE_APPLICATION": "s~other", "GOOGLE_CLOUD_PROJECT": "mine"}
    assert Settings.from_env(environ).project == "mine"


def test_dev_key_file_defaults_to_the_user_cache() -> None:
    assert Settings.from_env({"HOME": "/home/ada"}).dev_key_file == Path(
        "/home/ada/.cache/cloudtasks-deferred/dev-key.pem"
    )
    assert Settings.from_env({"XDG_CACHE_HOME": "/c", "HOME": "/h"}).dev_key_file == Path(
        "/c/cloudtasks-deferred/dev-key.pem"
    )


def test_effective_audiences_and_invokers_default_to_base_url_origin_and_service_account() -> None:
    settings = Settings(
        base_url="https://svc-abc.a.run.app/tasks", service_account="t@p.iam.gserviceaccount.com"
    )
    assert settings.effective_audiences == ("https://svc-abc.a.run.app",)
    assert settings.effective_invokers == ("t@p.iam.gserviceaccount.com",)
    explicit = dataclasses.replace(settings, audiences=("aud",), allowed_invokers=("x@y.z",))
    assert explicit.effective_audiences == ("aud",)
    assert explicit.effective_invokers == ("x@y.z",)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GOOGLE_CLOUD_PROJECT", "My Project", "GOOGLE_CLOUD_PROJECT"),
        ("CLOUDTASKS_DEFERRED_LOCATION", "US Central", "CLOUDTASKS_DEFERRED_LOCATION"),
        ("CLOUDTASKS_DEFERRED_QUEUE", "my_queue", "CLOUDTASKS_DEFERRED_QUEUE"),
        ("CLOUDTASKS_DEFERRED_BASE_URL", "svc.a.run.app", "absolute http"),
        ("CLOUDTASKS_DEFERRED_BASE_URL", "ftp://svc", "absolute http"),
        ("CLOUDTASKS_DEFERRED_BASE_URL", "https://svc/?x=1", "without \\?query"),
        ("CLOUDTASKS_DEFERRED_BASE_URL", "https://svc/#top", "without \\?query"),
        ("CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT", "not-an-email", "SERVICE_ACCOUNT"),
        ("CLOUDTASKS_DEFERRED_ALLOWED_INVOKERS", "a@b.c,nope", "ALLOWED_INVOKERS"),
        ("CLOUDTASKS_DEFERRED_OIDC_CERTS_URL", "http://certs.example/x", "https URL"),
        ("CLOUDTASKS_DEFERRED_OIDC_CERTS_URL", "file:///etc/certs", "https URL"),
        ("CLOUD_TASKS_EMULATOR_HOST", "localhost", "host:port"),
        ("CLOUD_TASKS_EMULATOR_HOST", "localhost:http", "host:port"),
        ("CLOUDTASKS_DEFERRED_DEV_MODE", "maybe", "expected true/false"),
        ("CLOUDTASKS_DEFERRED_NDB", "sometimes", "expected true/false/auto"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)


def test_direct_construction_names_the_field_too() -> None:
    with pytest.raises(ConfigurationError, match=r"Settings\.queue \(CLOUDTASKS_DEFERRED_QUEUE\)"):
        Settings(queue="bad queue")


@pytest.mark.parametrize("url", ["http://localhost:8080/certs", "http://[::1]:9/c", "https://x/c"])
def test_certs_url_may_be_plain_http_only_on_loopback(url: str) -> None:
    assert Settings(oidc_certs_url=url).oidc_certs_url == url


@pytest.mark.parametrize("platform_var", [{"GAE_ENV": "standard"}, {"K_SERVICE": "svc"}])
def test_dev_mode_refuses_to_switch_on_in_production(platform_var: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="refuses to switch on"):
        Settings.from_env({"CLOUDTASKS_DEFERRED_DEV_MODE": "true", **platform_var})


DEPLOYED = [{"GAE_ENV": "standard"}, {"K_SERVICE": "svc"}, {"CLOUD_RUN_JOB": "job"}]


@pytest.mark.parametrize("platform_var", DEPLOYED, ids=["app-engine", "cloud-run", "job"])
def test_dev_mode_refuses_to_switch_on_in_production_however_settings_are_built(
    platform_var: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in platform_var.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="refuses to switch on"):
        Settings(dev_mode=True, base_url="https://svc.a.run.app", service_account="a@b.c")
    with pytest.raises(ConfigurationError, match="refuses to switch on"):
        dataclasses.replace(Settings(), dev_mode=True)
    with pytest.raises(ConfigurationError, match="refuses to switch on"):
        # An explicit environ describing a laptop does not hide where the process runs.
        Settings.from_env({"CLOUDTASKS_DEFERRED_DEV_MODE": "true"})


def test_dev_mode_switches_on_on_a_local_machine() -> None:
    assert Settings(dev_mode=True).dev_mode is True
    assert Settings.from_env({"CLOUDTASKS_DEFERRED_DEV_MODE": "true"}).dev_mode is True


def test_settings_derived_from_the_environment_keep_the_platform(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # SECURITY.md's App Engine recipe: from_env(), then replace what the env cannot hold.
    for name, value in {"GAE_ENV": "standard", "GAE_SERVICE": "web", "GAE_VERSION": "v3"}.items():
        monkeypatch.setenv(name, value)
    key = SigningKey("k1", bytes(32))
    settings = dataclasses.replace(Settings.from_env(), signing_keys=(key,))
    assert settings.platform is Platform.APP_ENGINE
    assert (settings.app_engine_service, settings.app_engine_version) == ("web", "v3")
    assert settings.signing_keys == (key,)
    assert caplog.records == []


def test_hand_built_local_settings_on_app_engine_log_how_to_build_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GAE_ENV", "standard")
    settings = Settings(location="us-central1")
    assert settings.platform is Platform.LOCAL  # direct construction reads no environment
    assert "Settings.from_env()" in caplog.text
    caplog.clear()
    Settings(location="us-central1", platform=Platform.APP_ENGINE)
    assert caplog.records == []


def test_ndb_flag_accepts_auto() -> None:
    assert Settings.from_env({"CLOUDTASKS_DEFERRED_NDB": "auto"}).ndb is None
    assert Settings.from_env({"CLOUDTASKS_DEFERRED_NDB": "TRUE"}).ndb is True


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().queue = "x"  # type: ignore[misc]


def test_resource_name_helpers() -> None:
    assert queue_path("p", "l", "q") == "projects/p/locations/l/queues/q"
    assert origin("https://svc.example:8443/a/b?c") == "https://svc.example:8443"
