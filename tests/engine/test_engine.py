"""The batching engine in-process, on real llama.cpp with the tiny generated model."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from localserve.engine.embed import Embedder
from localserve.engine.engine import Engine
from localserve.engine.grammar import grammar_for
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.errors import InvalidOptionError, PromptTooLongError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, Event, ProgressEvent, TextEvent
from tests.support.json_prefix import is_json_prefix

GREEDY = SamplingOptions(temperature=0.0, num_predict=24)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    from tests.support.tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path_factory.mktemp("engine") / "tiny.gguf")
    loaded = Model([path])
    yield loaded
    loaded.close()


@pytest.fixture
def engine(model: Model) -> Iterator[Engine]:
    built = Engine(model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2)
    yield built
    built.close()


def job(
    model: Model,
    job_id: str,
    text: str,
    options: SamplingOptions = GREEDY,
    grammar: str | None = None,
) -> Job:
    return Job(job_id, model.tokenize(text, add_special=True), options, grammar)


def run(
    engine: Engine, max_steps: int = 10_000
) -> tuple[dict[str, str], dict[str, DoneEvent], list[list[Event]]]:
    """Step until idle: text per job, done event per job, and the events of every step."""
    texts: dict[str, str] = {}
    done: dict[str, DoneEvent] = {}
    steps: list[list[Event]] = []
    for _ in range(max_steps):
        if not engine.has_work():
            break
        events = engine.step()
        steps.append(events)
        for event in events:
            if isinstance(event, TextEvent):
                texts[event.id] = texts.get(event.id, "") + event.text
            elif isinstance(event, DoneEvent):
                done[event.id] = event
            else:
                raise AssertionError(event)
    assert not engine.has_work()
    return texts, done, steps


PROMPTS = ["Hello world, this is", "The capital of France is", "Once upon a time", "1, 2, 3, 4,"]


def test_concurrent_jobs_share_decode_steps(engine: Engine, model: Model) -> None:
    for i, prompt in enumerate(PROMPTS):
        engine.submit(job(model, str(i), prompt))
    texts, done, _ = run(engine)
    assert sorted(done) == ["0", "1", "2", "3"]
    assert all(d.done_reason == "length" and d.eval_count == 24 for d in done.values())
    assert engine.stats.max_jobs_in_step == 4  # all four in one llama_decode
    assert engine.stats.steps <= 26  # not 4 x 24: they were decoded together
    assert all(texts.get(str(i)) for i in range(4))


def test_greedy_output_does_not_depend_on_neighbours(engine: Engine, model: Model) -> None:
    for i, prompt in enumerate(PROMPTS):
        engine.submit(job(model, f"batch{i}", prompt))
    batched, _, _ = run(engine)
    for i, prompt in enumerate(PROMPTS):
        engine.submit(job(model, f"solo{i}", prompt))
        solo, _, _ = run(engine)
        assert solo[f"solo{i}"] == batched[f"batch{i}"]


def test_late_joiner_enters_the_running_batch(engine: Engine, model: Model) -> None:
    engine.submit(job(model, "early", PROMPTS[0], SamplingOptions(temperature=0, num_predict=40)))
    for _ in range(5):
        engine.step()
    engine.submit(job(model, "late", PROMPTS[1]))
    _, done, steps = run(engine)
    shared = [s for s in steps if {e.id for e in s if e.type == "text"} == {"early", "late"}]
    assert shared, "the late request never decoded in the same step as the running one"
    assert done["late"].queue_duration < done["early"].eval_duration


def test_more_jobs_than_slots_wait_their_turn(model: Model) -> None:
    engine = Engine(model, LoadOptions(num_ctx=128, num_parallel=2), n_threads=2)
    try:
        for i in range(5):
            engine.submit(
                job(model, str(i), PROMPTS[i % 4], SamplingOptions(temperature=0, num_predict=8))
            )
        assert engine.busy_slots() == 0
        engine.step()
        assert engine.busy_slots() == 2
        assert len(engine.waiting) == 3
        _, done, _ = run(engine)
        assert len(done) == 5
        assert engine.stats.max_jobs_in_step == 2
    finally:
        engine.close()


def test_cancel_leaves_within_one_step_and_frees_the_slot(engine: Engine, model: Model) -> None:
    engine.submit(job(model, "a", PROMPTS[0], SamplingOptions(temperature=0, num_predict=200)))
    engine.submit(job(model, "b", PROMPTS[1], SamplingOptions(temperature=0, num_predict=200)))
    for _ in range(3):
        engine.step()
    engine.cancel("a")
    events = engine.step()
    assert next(e for e in events if e.id == "a").type == "done"
    assert next(e for e in events if e.id == "a").done_reason == "cancel"
    assert not any(e.id == "a" and e.type == "text" for e in events)
    assert engine.busy_slots() == 1
    engine.cancel("b")
    run(engine)
    assert engine.busy_slots() == 0


def test_prefix_cache_reuses_a_finished_conversation(engine: Engine, model: Model) -> None:
    first = "System: be brief.\nUser: tell me a story about a dragon\nAssistant:"
    engine.submit(job(model, "turn1", first))
    texts, done, _ = run(engine)
    assert done["turn1"].prompt_cached == 0
    second = first + texts["turn1"] + "\nUser: and then?\nAssistant:"
    engine.submit(job(model, "turn2", second))
    _, done, _ = run(engine)
    assert done["turn2"].prompt_cached >= len(model.tokenize(first, add_special=True)) - 1
    assert engine.stats.prefix_hits == 1


def test_shared_system_prompt_is_copied_between_slots(engine: Engine, model: Model) -> None:
    system = "You are a helpful assistant who answers in one sentence. " * 3
    engine.submit(
        job(
            model,
            "x",
            system + "Question: why is the sky blue?",
            SamplingOptions(temperature=0, num_predict=60),
        )
    )
    for _ in range(4):
        engine.step()  # x is now generating in its slot
    engine.submit(job(model, "y", system + "Question: what is rain?"))
    _, done, _ = run(engine)
    shared = len(model.tokenize(system, add_special=True)) - 2
    assert done["y"].prompt_cached >= shared  # copied from x's slot while x was running


def test_seed_makes_sampling_repeatable(engine: Engine, model: Model) -> None:
    options = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, seed=1234, num_predict=30)
    engine.submit(job(model, "a", PROMPTS[2], options))
    first, _, _ = run(engine)
    engine.submit(job(model, "b", PROMPTS[2], options))
    second, _, _ = run(engine)
    assert first["a"] == second["b"]
    other = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, seed=99, num_predict=30)
    engine.submit(job(model, "c", PROMPTS[2], other))
    third, _, _ = run(engine)
    assert third["c"] != first["a"]


def test_stop_string_across_tokens_is_never_leaked(engine: Engine, model: Model) -> None:
    engine.submit(job(model, "free", PROMPTS[1], SamplingOptions(temperature=0, num_predict=40)))
    free, _, steps = run(engine)
    pieces = [e.text for s in steps for e in s if e.type == "text"]
    assert len(pieces) > 5
    # A stop string that starts inside one token's text and ends inside a later one.
    start = len(pieces[0]) + len(pieces[1]) - 1
    stop = free["free"][start : start + len(pieces[2]) + 2]
    engine.submit(
        job(
            model,
            "stopped",
            PROMPTS[1],
            SamplingOptions(temperature=0, num_predict=40, stop=(stop,)),
        )
    )
    stopped, done, steps = run(engine)
    assert done["stopped"].done_reason == "stop"
    assert done["stopped"].stop_sequence == stop  # which stop string it was
    assert stopped["stopped"] == free["free"][: free["free"].index(stop)]
    for step in steps:
        for event in step:
            if event.type == "text":
                assert stop not in event.text


def test_num_ctx_end_stops_with_length(model: Model) -> None:
    engine = Engine(model, LoadOptions(num_ctx=40, num_parallel=1), n_threads=2)
    try:
        engine.submit(
            job(model, "long", PROMPTS[0], SamplingOptions(temperature=0, num_predict=-1))
        )
        _, done, _ = run(engine)
        assert done["long"].done_reason in ("length", "stop")
        if done["long"].done_reason == "length":
            assert done["long"].prompt_eval_count + done["long"].eval_count == 40
    finally:
        engine.close()


def test_prompt_longer_than_the_context_is_refused(model: Model) -> None:
    engine = Engine(model, LoadOptions(num_ctx=32, num_parallel=1), n_threads=2)
    try:
        with pytest.raises(PromptTooLongError, match="context holds 32"):
            engine.submit(job(model, "x", "word " * 100))
        assert not engine.has_work()
    finally:
        engine.close()


def test_json_schema_output_parses(engine: Engine, model: Model) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"],
    }
    engine.submit(
        job(
            model,
            "j",
            PROMPTS[0],
            SamplingOptions(temperature=0.7, seed=3, num_predict=200),
            grammar_for(schema),
        )
    )
    texts, done, _ = run(engine)
    assert done["j"].done_reason == "stop"
    value = json.loads(texts["j"])
    assert isinstance(value["ok"], bool) and isinstance(value["n"], int)


def test_json_mode_output_parses(engine: Engine, model: Model) -> None:
    engine.submit(
        job(
            model,
            "j",
            PROMPTS[2],
            SamplingOptions(temperature=0.7, seed=5, num_predict=400),
            grammar_for("json"),
        )
    )
    texts, done, _ = run(engine)
    # A random model may ramble past num_predict: then the text must still be the
    # beginning of a JSON document; either way the grammar is checked on every run.
    if done["j"].done_reason == "stop":
        json.loads(texts["j"], strict=False)
    else:
        assert done["j"].done_reason == "length" and texts["j"].lstrip()
        assert is_json_prefix(texts["j"]), texts["j"]


@pytest.mark.parametrize(
    "bad", ["xml", 5, ["json"], {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}]
)
def test_bad_formats_are_invalid_options(bad: object) -> None:
    with pytest.raises(InvalidOptionError):
        grammar_for(bad)


def test_embeddings_are_normalised_and_stable(model: Model) -> None:
    embedder = Embedder(model, LoadOptions(num_ctx=128), n_threads=2)
    try:
        result = embedder.embed(["hello there", "general kenobi", "hello there"], truncate=True)
        assert len(result.vectors) == 3
        for vector in result.vectors:
            assert len(vector) == model.n_embd
            assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
        assert result.vectors[0] == pytest.approx(result.vectors[2], abs=1e-5)
        assert result.vectors[0] != pytest.approx(result.vectors[1], abs=1e-3)
        alone = embedder.embed(["general kenobi"], truncate=True)
        assert alone.vectors[0] == pytest.approx(result.vectors[1], abs=1e-4)
        with pytest.raises(PromptTooLongError):
            embedder.embed(["word " * 500], truncate=False)
        assert len(embedder.embed(["word " * 500], truncate=True).vectors) == 1
    finally:
        embedder.close()


def test_embedding_packs_are_bounded_by_logit_bytes(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large-vocabulary model would reserve n_vocab floats per packed token: packs
    stay under PACK_BYTES, a longer input still goes whole, and results don't change."""
    from localserve.engine import pooled

    texts = ["hello there", "general kenobi", "a b c d e f g h i j k l", "x"]
    whole = Embedder(model, LoadOptions(num_ctx=128), n_threads=2)
    try:
        together = whole.embed(texts, truncate=True).vectors
    finally:
        whole.close()
    monkeypatch.setattr(pooled, "PACK_BYTES", 4 * model.n_vocab * 6)  # six tokens a pack
    small = Embedder(model, LoadOptions(num_ctx=128), n_threads=2)
    groups: list[tuple[int, int]] = []  # (inputs, tokens) per decode
    original = small.compute

    def counted(group: list[list[int]]) -> list[list[float]]:
        groups.append((len(group), sum(len(tokens) for tokens in group)))
        return original(group)

    monkeypatch.setattr(small, "compute", counted)
    try:
        assert small.pack_tokens == 6
        packed = small.embed(texts, truncate=True).vectors
    finally:
        small.close()
    assert len(groups) > 1
    assert all(tokens <= 6 or inputs == 1 for inputs, tokens in groups)
    assert (1, max(tokens for _, tokens in groups)) in groups  # the long one went whole
    assert max(tokens for _, tokens in groups) > 6
    for a, b in zip(packed, together, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_idle_sequences_are_parked_then_restored_exactly(model: Model) -> None:
    """Admitting a job moves the other idle sequences out of the KV cache (host memory);
    a job continuing a parked conversation gets its cells back instead of re-reading
    them, and generates exactly what a fresh engine would."""
    first = model.tokenize("alpha beta gamma delta " * 6, add_special=True)
    engine = Engine(model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2)
    try:
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        [held] = [s for s in engine.slots if s.tokens]
        conversation = list(held.tokens)  # the prompt and the answer
        engine.submit(job(model, "b", "one two three four five " * 4))
        engine.step()  # admission
        assert engine.stats.parked == 1 and len(engine.cells.parked) == 1
        assert [s.index for s in engine.slots if s.tokens] == [engine.jobs["b"].slot]
        assert engine.cells.parked_bytes > 0
        run(engine)

        follow_up = [*conversation, *model.tokenize(" and then", add_special=False)]
        engine.submit(Job("c", follow_up, GREEDY))
        texts, done, _ = run(engine)
        assert engine.stats.restored == 1
        assert done["c"].prompt_cached == len(conversation)
        assert len(engine.cells.parked) == 1  # "b" is parked now
    finally:
        engine.close()

    fresh = Engine(model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2)
    try:
        fresh.submit(Job("c", follow_up, GREEDY))
        fresh_texts, fresh_done, _ = run(fresh)
        assert fresh_done["c"].prompt_cached == 0
        assert fresh_texts["c"] == texts["c"]
    finally:
        fresh.close()


def test_parked_sequences_are_bounded_oldest_first(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localserve.engine import cells as cells_module

    engine = Engine(model, LoadOptions(num_ctx=256, num_parallel=2), n_threads=2)
    try:
        engine.submit(job(model, "a", "alpha " * 20))
        run(engine)
        engine.submit(job(model, "b", "beta " * 20))
        run(engine)  # "a" parked
        one = engine.cells.parked_bytes
        assert one > 0
        monkeypatch.setattr(cells_module, "PARK_BYTES", int(one * 1.5))
        engine.submit(job(model, "c", "gamma " * 20))
        run(engine)  # "b" parked, "a" dropped to stay under the bound
        assert len(engine.cells.parked) == 1
        assert engine.cells.parked_bytes <= cells_module.PARK_BYTES
        [entry] = engine.cells.parked.values()
        tokens = entry.tokens
        assert tokens[: len(model.tokenize("beta " * 20, add_special=True))] == model.tokenize(
            "beta " * 20, add_special=True
        )
    finally:
        engine.close()


def test_parked_tokens_never_exceed_the_kv_cells(model: Model) -> None:
    """Host memory for parked sequences stays within the KV cache's own size."""
    engine = Engine(model, LoadOptions(num_ctx=128, num_parallel=2), n_threads=2)
    try:
        kv_cells = engine.context.shape.n_ctx
        for word in ("alpha", "beta", "gamma", "delta", "epsilon"):
            engine.submit(job(model, word, f"{word} " * 12))
            run(engine)
            assert 0 < engine.cells.parked_tokens <= kv_cells or word == "alpha"
        assert engine.stats.parked >= 4
        assert len(engine.cells.parked) < engine.stats.parked  # the oldest were dropped
        assert engine.cells.parked_tokens == sum(
            len(p.tokens) for p in engine.cells.parked.values()
        )
    finally:
        engine.close()


def test_no_kv_room_frees_idle_caches_and_retries(model: Model) -> None:
    """llama_decode returning 1 (no KV slot): the loop drops idle cached prefixes,
    least recently used first, and retries, as llama.cpp's server does."""
    engine = Engine(
        model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2, kv_cells=256, park_idle=False
    )
    try:
        options = SamplingOptions(temperature=0, num_predict=40)
        engine.submit(job(model, "first", "alpha beta gamma delta " * 6, options))  # 104 tokens
        run(engine)
        [cached] = [s for s in engine.slots if s.tokens]
        assert len(cached.tokens) > 140  # kept for the prefix cache
        # Shares nothing with that cache (no BOS either), so it lands in another slot,
        # and both together need more cells than the pool has.
        tokens = model.tokenize("one two three four five " * 20, add_special=False)
        engine.submit(Job("second", tokens, options))
        _, done, _ = run(engine)
        assert done["second"].done_reason == "length"
        assert done["second"].eval_count == 40
        assert engine.stats.kv_full_retries >= 1
        assert cached.tokens == []  # the idle cache made room
    finally:
        engine.close()


def test_kv_pool_too_small_for_a_running_job_fails_it_cleanly(model: Model) -> None:
    engine = Engine(model, LoadOptions(num_ctx=512, num_parallel=2), n_threads=2, kv_cells=256)
    try:
        options = SamplingOptions(temperature=0, num_predict=400, ignore_eos=True)
        engine.submit(job(model, "a", "x " * 60, options))
        engine.submit(job(model, "b", "y " * 60, options))
        events = [e for _ in range(2000) if engine.has_work() for e in engine.step()]
        errors = [e for e in events if e.type == "error"]
        assert errors
        assert "KV cache is full" in errors[0].message
        assert not engine.has_work()
        engine.submit(job(model, "after", "hello", SamplingOptions(temperature=0, num_predict=4)))
        _, done, _ = run(engine)
        assert done["after"].eval_count == 4  # the engine still works
    finally:
        engine.close()


def test_importing_the_engine_leaves_no_unclosed_file() -> None:
    # llama-cpp-python opens /dev/null at import and never closes it; the engine
    # closes it at exit, so no process ends with a ResourceWarning.
    import subprocess
    import sys

    code = "import localserve.engine.llama"
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr


def test_lazy_tool_grammar_waits_for_the_call_marker(model: Model) -> None:
    """``tool_choice: auto``: free text until the model writes ``<tool_call>``, then
    only what continues a valid call."""
    import llama_cpp.llama_cpp as L

    from localserve.engine.sampler import Sampler
    from localserve.engine.tool_grammar import tool_grammar
    from localserve.runtime.chat.formats import ToolFormat

    hermes = ToolFormat("hermes", starts=("<tool_call>",), end="</tool_call>")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    lazy = tool_grammar(hermes, tools, choice="auto", parallel=True)
    assert lazy is not None and lazy.triggers
    sampler = Sampler(model, SamplingOptions(temperature=0), lazy.gbnf, lazy.triggers)
    try:
        letter = model.tokenize("x", add_special=False)[-1]
        assert sampler._grammar_allows(letter)  # free text before the marker
        for token in model.tokenize("Sure. <tool_call>", add_special=False, parse_special=True):
            L.llama_sampler_accept(sampler.grammar, token)
        assert not sampler._grammar_allows(letter)  # now a call must follow
        brace = model.tokenize("{", add_special=False)[-1]
        assert sampler._grammar_allows(brace)
    finally:
        sampler.close()
    strict = tool_grammar(hermes, tools, choice="required", parallel=False)
    assert strict is not None and not strict.triggers


def test_logprobs_greedy_token_is_the_top_one_and_batch_independent(model: Model) -> None:
    """Greedy: the chosen token is the top-1 alternative and its logprob the maximum;
    a sequence's logprobs are the same alone and in a batch of 8 (tiny F32 model)."""
    from localserve.runtime.protocol import LogprobsEvent

    def logprobs_of(engine: Engine, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        while engine.has_work():
            for event in engine.step():
                if isinstance(event, LogprobsEvent):
                    found[event.id].extend(event.entries)
        return found

    options = SamplingOptions(temperature=0, num_predict=12, ignore_eos=True)
    alone = Engine(model, LoadOptions(num_ctx=256, num_parallel=8), n_threads=2)
    try:
        first = job(model, "solo", PROMPTS[0], options)
        first.logprobs = 3
        alone.submit(first)
        solo = logprobs_of(alone, ["solo"])["solo"]
    finally:
        alone.close()
    assert len(solo) == 12
    for entry in solo:
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == entry["token"]
        assert entry["logprob"] == pytest.approx(top[0]["logprob"])
        assert entry["logprob"] <= 0 and [t["logprob"] for t in top] == sorted(
            (t["logprob"] for t in top), reverse=True
        )
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
        assert all(math.isfinite(t["logprob"]) for t in top)

    batched = Engine(model, LoadOptions(num_ctx=256, num_parallel=8), n_threads=2)
    try:
        ids = [f"b{i}" for i in range(8)]
        for i, name in enumerate(ids):
            other = job(model, name, PROMPTS[0] if i == 3 else PROMPTS[i % 3 + 1], options)
            other.logprobs = 3
            batched.submit(other)
        together = logprobs_of(batched, ids)["b3"]
    finally:
        batched.close()
    assert [e["token"] for e in together] == [e["token"] for e in solo]
    for a, b in zip(together, solo, strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)


def test_no_logprobs_events_unless_asked(engine: Engine, model: Model) -> None:
    engine.submit(job(model, "plain", PROMPTS[1], SamplingOptions(temperature=0, num_predict=6)))
    _, _, steps = run(engine)
    assert all(event.type in ("text", "done") for step in steps for event in step)


def test_n_answers_share_one_prefill(model: Model) -> None:
    """Siblings (OpenAI's n) wait for the first answer to read the prompt, then copy its
    cells: the prompt is decoded once, plus one token for each other answer."""
    engine = Engine(model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2)
    try:
        tokens = model.tokenize("Once upon a time there was a " * 6, add_special=True)
        first: Job | None = None
        for i in range(4):
            options = SamplingOptions(temperature=1.0, seed=10 + i, num_predict=6, ignore_eos=True)
            sibling = Job(f"c{i}", tokens, options, parent=first)
            engine.submit(sibling)
            first = first or sibling
        texts, done, _ = run(engine)
        assert engine.stats.prompt_tokens == len(tokens) + 3
        assert [done[f"c{i}"].prompt_cached for i in range(1, 4)] == [len(tokens) - 1] * 3
        assert len(set(texts.values())) > 1  # four seeds, four answers
    finally:
        engine.close()


def test_progress_events_follow_the_reading_of_a_prompt(model: Model) -> None:
    """A job that asks (a streamed request) hears when it gets its slot and after each
    chunk of its prompt, before its first token; one that does not hears nothing."""
    engine = Engine(model, LoadOptions(num_ctx=256, num_parallel=2, prefill_chunk=32), n_threads=2)
    try:
        # Another stream generating keeps the long prompt to chunks of 32 tokens.
        engine.submit(job(model, "other", "Once upon a time", SamplingOptions(num_predict=40)))
        engine.step()
        prompt = model.tokenize("word " * 100, add_special=True)
        reader = Job("reader", prompt, GREEDY, progress=True)
        engine.submit(reader)
        seen: list[Event] = []
        while engine.has_work():
            seen += [e for e in engine.step() if e.id == "reader"]
    finally:
        engine.close()
    progress = [e for e in seen if isinstance(e, ProgressEvent)]
    first_text = next(i for i, e in enumerate(seen) if isinstance(e, TextEvent))
    assert all(isinstance(e, ProgressEvent) for e in seen[: len(progress)])
    assert len(progress) <= first_text  # every one before the first token
    assert progress[0].processed == 0 and progress[0].cache == reader.cached
    assert [p.total for p in progress] == [len(prompt)] * len(progress)
    read = [p.processed for p in progress]
    assert read == sorted(read) and read[-1] == len(prompt) - reader.cached
    assert len(progress) >= 1 + (len(prompt) - reader.cached) // 32  # chunk by chunk
    assert all(b - a <= 32 for a, b in itertools.pairwise(read))


def test_no_progress_events_unless_asked(engine: Engine, model: Model) -> None:
    engine.submit(job(model, "plain", "word " * 100))
    _, done, _steps = run(engine)  # run() refuses any event but text and done
    assert done["plain"].prompt_eval_count > 100
