"""A mistyped CONDUIT_ variable is warned about, with the closest setting's name."""

from __future__ import annotations

import logging

import pytest

from conduit_workers.settings import Settings, unknown_variables, warn_unknown_variables


def test_every_setting_is_known_and_typos_get_the_closest_name() -> None:
    env = {
        "CONDUIT_REDIS__URL": "redis://h/1",  # a setting
        "CONDUIT_RETRY__WINDOW_PROMPTS": "8",  # a setting
        "CONDUIT_REDIS_URL": "redis://h/2",  # one underscore short
        "CONDUIT_ROUTER__DECAYY": "0.9",
        "CONDUIT_NOPE__X": "1",
        "CONDUIT_PROVIDER_KEY": "sk-1",  # an API key the catalog names: not a setting's typo
        "CONDUIT_REPLAY_URL": "http://127.0.0.1:8700/v1",  # the catalog's, documented
        "CONDUIT_TEST_REDIS_URL": "redis://h/3",
        "HOME": "/root",
    }
    assert unknown_variables(env) == [
        ("CONDUIT_NOPE__X", None),
        ("CONDUIT_REDIS_URL", "CONDUIT_REDIS__URL"),
        ("CONDUIT_ROUTER__DECAYY", "CONDUIT_ROUTER__DECAY"),
    ]


def test_the_warning_names_the_variable_and_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="conduit_workers.settings"):
        warn_unknown_variables({"CONDUIT_ROUTER__DECAYY": "0.9", "CONDUIT_ROUTER__DECAY": "0.9"})
    (record,) = caplog.records
    assert "CONDUIT_ROUTER__DECAYY" in record.getMessage()
    assert "did you mean CONDUIT_ROUTER__DECAY?" in record.getMessage()
    assert "0.9" not in record.getMessage()  # names only: a value may be a secret


def test_known_names_follow_the_settings_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDUIT_EXECUTOR__TIMEOUT_S", "7")
    assert Settings().executor.timeout_s == 7.0
    assert unknown_variables({"CONDUIT_EXECUTOR__TIMEOUT_S": "7"}) == []
