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
