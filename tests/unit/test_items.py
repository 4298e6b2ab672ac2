import pytest

from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.items import idempotency_key, parse_line
from conduit_workers.errors import InputError

LIMIT = 100


def parse(text: str, **kw):
    return parse_line(text, line=7, max_prompt_chars=LIMIT, **kw)


def test_valid_line_keeps_its_fields_and_ignores_unknown_ones():
    item = parse('{"id": 12, "prompt": "hi", "user": "ann", "metadata": {"k": 1}, "source": "x"}')
    assert (item.prompt, item.external_id, item.user, item.metadata, item.line) == (
        "hi",
        "12",
        "ann",
        {"k": 1},
        7,
    )


def test_same_item_gives_same_key_and_id_takes_precedence_over_text():
    assert parse('{"prompt": "a"}').key == parse('{"prompt": "a"}').key
    assert parse('{"prompt": "a"}').key != parse('{"prompt": "b"}').key
    assert parse('{"prompt": "a", "user": "u"}').key != parse('{"prompt": "a"}').key
    assert (
        parse('{"id": "q1", "prompt": "a"}').key == parse('{"id": "q1", "prompt": "a again"}').key
    )
    assert idempotency_key("a", None, None) != idempotency_key("a", "a", None)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": 1}', "missing field 'prompt'"),
        ('{"prompt": ""}', "'prompt' is empty"),
        ('{"prompt": "   "}', "'prompt' is empty"),
        ('{"prompt": 3}', "'prompt' must be a string"),
        ('{"prompt": "' + "x" * (LIMIT + 1) + '"}', "over the limit of 100"),
        ('{"prompt": "a", "id": [1]}', "'id' must be a string or integer"),
        ('{"prompt": "a", "id": true}', "'id' must be a string or integer"),
        ('{"prompt": "a", "user": 5}', "'user' must be a string"),
        ('{"prompt": "a", "metadata": "x"}', "'metadata' must be an object"),
        ('{"prompt": "a", "metadata": {"v": NaN}}', "invalid JSON"),
        ('{"prompt": "a", "constraints": {"max_cost_usd": -1}}', "max_cost_usd must be"),
        ('{"prompt": "a", "constraints": {"speed": 1}}', "unknown field"),
        (
            '{"prompt": "a", "constraints": {"quality_floor": 1.5}}',
            "quality_floor must be in [0, 1]",
        ),
        ('{"prompt": "a", "constraints": {"quality_floor": "high"}}', "quality_floor must be"),
    ],
)
def test_bad_lines_say_line_and_reason(line, reason):
    with pytest.raises(InputError) as info:
        parse(line)
    assert info.value.line == 7
    assert reason in str(info.value)
    assert str(info.value).startswith("line 7: ")


def test_error_messages_never_echo_the_prompt():
    secret = "my secret prompt text"
    with pytest.raises(InputError) as info:
        parse_line('{"prompt": "' + secret + '"}', line=1, max_prompt_chars=5)
    assert secret not in str(info.value)


def test_unknown_model_in_constraint_is_rejected():
    with pytest.raises(InputError, match=r"unknown model\(s\) \['gpt-9'\]"):
        parse(
            '{"prompt": "a", "constraints": {"allowed_models": ["gpt-9"]}}',
            known_models=frozenset({"m"}),
        )


def test_query_constraints_override_batch_constraints():
    batch = parse_constraints({"lambda_cost": 0.5, "max_cost_usd": 0.1})
    query = parse_constraints({"lambda_cost": 0.9})
    merged = query.merged_over(batch)
    assert merged == Constraints(lambda_cost=0.9, max_cost_usd=0.1)
    assert merged.to_json() == {"lambda_cost": 0.9, "max_cost_usd": 0.1}


def test_quality_floor_per_prompt_overrides_the_batch_floor():
    item = parse('{"prompt": "a", "constraints": {"quality_floor": 0.9}}')
    assert item.constraints.quality_floor == 0.9
    batch = parse_constraints({"quality_floor": 0.95, "lambda_cost": 0.2})
    merged = item.constraints.merged_over(batch)
    assert (merged.quality_floor, merged.lambda_cost) == (0.9, 0.2)
    assert merged.to_json() == {"lambda_cost": 0.2, "quality_floor": 0.9}
