from pathlib import Path

import pytest

from conduit_workers.domain.catalog import load_catalog, parse_catalog
from conduit_workers.errors import ConfigError
from conduit_workers.settings import DEFAULT_CATALOG


def _model(**kw):
    base = {
        "name": "m",
        "provider": "openai-compatible",
        "base_url": "http://x/v1",
        "input_price_per_mtok_usd": 1.0,
        "output_price_per_mtok_usd": 2.0,
    }
    base.update(kw)
    return base


def test_shipped_catalog_lists_the_demo_models_and_expands_the_replay_url():
    cat = load_catalog(DEFAULT_CATALOG, {"CONDUIT_REPLAY_URL": "http://127.0.0.1:9999/v1"})
    assert cat.names == ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert cat.reference == "gpt-4-1106-preview"
    assert {m.base_url for m in cat.models} == {"http://127.0.0.1:9999/v1"}
    default = load_catalog(DEFAULT_CATALOG, {})
    assert default.models[0].base_url == "http://127.0.0.1:8700/v1"


def test_cost_is_tokens_times_price_per_million():
    cat = parse_catalog(
        {"models": [_model(input_price_per_mtok_usd=10, output_price_per_mtok_usd=30)]}, {}
    )
    assert cat.get("m").cost_usd(1_000, 100) == pytest.approx(0.01 + 0.003)


def test_real_provider_reads_its_key_variable_by_default():
    cat = parse_catalog({"models": [_model(name="g", provider="groq", base_url=None)]}, {})
    assert cat.get("g").api_key_env == "GROQ_API_KEY"


@pytest.mark.parametrize(
    "models, message",
    [
        ([_model(provider="acme")], "provider 'acme'"),
        ([_model(base_url=None)], "needs base_url"),
        ([_model(base_url="127.0.0.1:8700/v1")], "base_url must be an http"),
        ([_model(base_url="http:///v1")], "base_url must be an http"),
        ([_model(), _model()], "more than once"),
        ([_model(colour="red")], "unknown field"),
        ([_model(input_price_per_mtok_usd="cheap")], "input_price_per_mtok_usd must be float"),
        ([_model(input_price_per_mtok_usd=-1)], "must be >= 0"),
        ([_model(base_url="${NOPE}")], "NOPE is not set"),
        ([], "no model"),
    ],
)
def test_bad_catalogs_name_the_offending_value(models, message):
    with pytest.raises(ConfigError, match=message):
        parse_catalog({"models": models}, {})


def test_unknown_reference_and_missing_file_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="reference 'x'"):
        parse_catalog({"reference": "x", "models": [_model()]}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalog(tmp_path / "none.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_catalog(bad, {})


def test_a_model_without_prices_gets_genai_prices_list_prices_with_a_log_line(caplog):
    import logging

    from conduit_workers.domain.catalog import parse_catalog

    data = {
        "models": [
            {"name": "gpt-4o", "provider": "openai"},  # no prices: genai-prices knows it
            {
                "name": "mine",
                "model_id": "llama-3.1-8b-instant",
                "provider": "groq",
                "input_price_per_mtok_usd": 0.5,  # given: kept; the output price is filled
            },
        ]
    }
    with caplog.at_level(logging.WARNING, logger="conduit_workers.domain.catalog"):
        cat = parse_catalog(data, {})
    g = cat.get("gpt-4o")
    assert (g.input_price_per_mtok_usd, g.output_price_per_mtok_usd) == (2.5, 10.0)
    m = cat.get("mine")
    assert (m.input_price_per_mtok_usd, m.output_price_per_mtok_usd) == (0.5, 0.08)
    said = [r.getMessage() for r in caplog.records]
    assert any("gpt-4o" in s and "genai-prices" in s and "$2.5 in" in s for s in said), said
    assert any("mine" in s and "output_price_per_mtok_usd" in s for s in said), said


def test_a_model_without_prices_that_genai_prices_does_not_know_is_a_clear_error():
    from conduit_workers.domain.catalog import parse_catalog
    from conduit_workers.errors import ConfigError

    data = {"models": [{"name": "house-model-7", "provider": "openai-compatible", "base_url": "x"}]}
    with pytest.raises(ConfigError, match="genai-prices has no price for 'house-model-7'"):
        parse_catalog(data, {})
