from __future__ import annotations

import pytest

from streams.settings import BadSetting, Settings
from streams.state import frequency
from streams.vast import breaker


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "k:1", "REDIS_URL": "redis://r:2/0", "ADSTREAM_WEB_PORT": "7"}
    )
    assert settings == Settings("k:1", "redis://r:2/0", 7)


def test_empty_variables_mean_the_default() -> None:
    assert Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": ""}) == Settings()


def test_bad_value_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="ADSTREAM_WEB_PORT"):
        Settings.from_env({"ADSTREAM_WEB_PORT": "eighty"})


def test_the_ssrf_guard_is_set_from_the_environment() -> None:
    settings = Settings.from_env(
        {"ADSTREAM_BLOCK_PRIVATE_ADDRESSES": "1", "ADSTREAM_ALLOWED_NETWORKS": "10.0.0.0/8"}
    )
    assert settings.block_private_addresses
    assert settings.allowed_networks == "10.0.0.0/8"
    assert Settings.from_env(settings.as_env()) == settings
    assert not Settings().block_private_addresses
    with pytest.raises(ValueError, match=r"ADSTREAM_ALLOWED_NETWORKS=.*: .intranet."):
        Settings.from_env({"ADSTREAM_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"})


def test_the_impression_history_is_set_in_whole_seconds_of_at_least_one() -> None:
    assert Settings().impression_history_s == 7 * 86_400
    assert Settings().impression_history_s * 1000 == frequency.DEFAULT_HISTORY_MS
    settings = Settings.from_env({"ADSTREAM_IMPRESSION_HISTORY_S": "3600"})
    assert settings.impression_history_s == 3600
    assert Settings.from_env(settings.as_env()) == settings
    for bad in ("0", "-1", "1.5", "a week"):
        with pytest.raises(ValueError, match="ADSTREAM_IMPRESSION_HISTORY_S"):
            Settings.from_env({"ADSTREAM_IMPRESSION_HISTORY_S": bad})


def test_the_breakers_defaults_are_the_breakers_own() -> None:
    """Kept apart so that reading the settings does not import the VAST package."""
    settings = Settings()
    assert settings.breaker_timeouts == breaker.DEFAULT_THRESHOLD
    assert settings.breaker_cooldown_s == breaker.DEFAULT_COOLDOWN_S
    assert settings.breaker_min_failing_s == breaker.DEFAULT_MIN_FAILING_S


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("ADSTREAM_LOG_LEVEL", "loud", "one of debug, info, warning, error, critical"),
        ("ADSTREAM_WEB_PORT", "99999", "<= 65535"),
        ("REDIS_URL", "notaurl", "not a Redis URL"),
        ("ADSTREAM_BATCH_SIZE", "0", ">= 1"),
        ("ADSTREAM_PARTITIONS", "0", ">= 1"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka:ninety", "not host:port"),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:1,,b:2", "not host:port"),
        ("ADSTREAM_STORE", "disk", "one of rocksdb, memory"),
        ("ADSTREAM_CONNECT_TIMEOUT_S", "0", "> 0"),
    ],
)
def test_a_bad_setting_is_named_by_its_variable(variable: str, value: str, problem: str) -> None:
    with pytest.raises(BadSetting) as raised:
        Settings.from_env({variable: value})
    message = str(raised.value)
    assert message.startswith(f"bad setting {variable}={value!r}: ")
    assert problem in message
    assert "$." not in message


def test_log_levels_are_read_in_either_case_and_urls_of_every_redis_scheme() -> None:
    assert Settings.from_env({"ADSTREAM_LOG_LEVEL": "WARNING"}).log_level == "warning"
    for url in ("redis://r:1/0", "rediss://r:1/0", "unix:///run/redis.sock", ""):
        assert Settings.from_env({"REDIS_URL": url}).redis_url == (url or Settings().redis_url)
    assert Settings(redis_url="").redis_url == ""
    for servers in ("a:1, b:2", "kafka", "[::1]:9092"):
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": servers})
        assert settings.kafka_bootstrap_servers == servers
