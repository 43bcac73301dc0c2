"""The rollout engine: continuous batching (`sampling.engine`) gives static batching's samples
for the same seed; G samples of a prompt share its cached keys and values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import sharding
from alignax.models import init_model, tiny_config
from alignax.sampling.engine import run_engine, sample_continuous
from alignax.sampling.generation import generate
from alignax.sampling.sampler import left_pad, sample_tokens

PAD, WIDTH, N, G = 256, 8, 12, 3
STOPS = tuple(range(3, 40))  # frequent stops: rows end at very different lengths


@pytest.fixture(scope="module")
def setup():
    model = init_model(tiny_config("llama"), seed=0)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, 250, rng.integers(2, 9))) for _ in range(6)]
    graphdef, params = nnx.split(model)
    ids, mask = left_pad(prompts, PAD, WIDTH)
    static = sample_tokens(graphdef, params, ids, mask, jax.random.key(7), num_samples=G,
                           max_new_tokens=N, stop_ids=STOPS, pad_id=PAD, row_keys=True)
    return model, prompts, [np.asarray(x) for x in static]


def _continuous(model, prompts, slots, **kw):
    return sample_continuous(model, prompts, jax.random.key(7), slots=slots, max_new_tokens=N,
                             eos_id=258, pad_id=PAD, num_samples=G, stop_ids=STOPS,
                             prompt_width=WIDTH, **kw)


@pytest.mark.parametrize("slots", [18, 5, 1])
def test_continuous_equals_static(setup, slots):
    model, prompts, (tokens, logps, mask) = setup
    out, stats = _continuous(model, prompts, slots)
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_allclose(out.logps, logps, rtol=0, atol=2e-6)
    requests = len(prompts) * G
    assert stats.refills == requests - min(slots, requests)  # every freed slot was reused
    # Prefills start refill_at = max(1, slots // 8) requests each, between decode steps.
    assert stats.prefills == -(-requests // max(1, slots // 8))
    assert stats.tokens == mask.sum()
    assert len(set(mask.sum(1))) > 3  # the rows really end at different lengths
    # Static batching idles the stopped rows' slots: all 18 at once runs to the longest row.
    static_steps = requests * mask.sum(1).max()
    if slots == 18:
        assert stats.slot_steps == static_steps
    else:  # refilled slots: more of the slot-steps are useful
        assert stats.efficiency > mask.sum() / static_steps + 0.2


def test_each_request_stops_at_its_own_limit(setup):
    model, prompts, (tokens, logps, mask) = setup
    limits = np.random.default_rng(1).integers(1, N + 1, len(prompts) * G)
    out, _ = _continuous(model, prompts, 4, limits=limits)
    for j, limit in enumerate(limits):
        kept = min(int(limit), int(mask[j].sum()))  # its limit or its stop token
        assert out.mask[j].sum() == kept
        np.testing.assert_array_equal(out.tokens[j, :kept], tokens[j, :kept])
    with pytest.raises(ValueError, match="limits"):
        _continuous(model, prompts, 4, limits=[N + 1] * (len(prompts) * G))
    with pytest.raises(ValueError, match="refill_at: between 1 and slots=4"):
        _continuous(model, prompts, 4, refill_at=5)  # would wait for 5 free slots forever
    with pytest.raises(ValueError, match="slots: at least 1"):
        _continuous(model, prompts, 0)


def test_engine_on_a_mesh_splits_its_slots(setup):
    """On a data=2 x tensor=2 mesh the slots and the results' rows are split over `data`
    (each device decodes its share) and the samples are one device's."""
    model, prompts, (tokens, logps, mask) = setup
    graphdef, params = nnx.split(model)
    ids, pmask = left_pad(prompts, PAD, WIDTH)
    mesh = sharding.make_mesh({"data": 2, "tensor": 2}, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        params = jax.device_put(params, sharding.tree_shardings(
            params, mesh=mesh, rules=sharding.decode_rules()))
        out, counters = run_engine(
            graphdef, params, *jax.device_put((ids, pmask), sharding.batch_sharding(mesh)),
            np.full(len(prompts) * G, N, np.int32), jax.random.key(7), slots=8, num_samples=G,
            max_new_tokens=N, temperature=1.0, top_k=0, top_p=1.0, stop_ids=STOPS,
            pad_id=PAD, refill_at=2)
    assert out.tokens.sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(out.mask), mask)
    np.testing.assert_allclose(np.asarray(out.logps), logps, rtol=0, atol=2e-6)
    assert int(counters["refills"]) == len(prompts) * G - 8


@pytest.mark.parametrize("name", ["qwen3"])  # q/k norms; Llama: test_continuous_equals_static
def test_shared_prompt_cache_equals_repeated(name):
    """G = 4 samples per prompt read one copy of the prompt's keys (the default for G > 1);
    the same draws on G copies of the prompt (G = 1, repeated prompts) agree."""
    graphdef, params = nnx.split(init_model(tiny_config(name), seed=0))
    rng = np.random.default_rng(0)
    ids, mask = left_pad([list(rng.integers(3, 250, rng.integers(2, 9))) for _ in range(4)],
                         PAD, WIDTH)
    kw = dict(max_new_tokens=10, stop_ids=(258,), pad_id=PAD, row_keys=True)
    shared = sample_tokens(graphdef, params, ids, mask, jax.random.key(3), num_samples=4, **kw)
    copies = sample_tokens(graphdef, params, np.repeat(ids, 4, 0), np.repeat(mask, 4, 0),
                           jax.random.key(3), num_samples=1, **kw)
    np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(copies.tokens))
    assert float(jnp.max(jnp.abs(shared.logps - copies.logps))) < 2e-6


def test_shared_prompt_cache_memory():
    """Compiled memory of a G = 16 group's cache against 16 copies: 2 prompts x 64 tokens,
    8 new tokens: B x P + R x N = 384 cache slots instead of R x (P + N) = 2304."""
    graphdef, params = nnx.split(init_model(tiny_config("llama", num_layers=4), seed=0))
    ids, mask = np.ones((2, 64), np.int32), np.ones((2, 64), np.int32)
    kw = dict(max_new_tokens=8, stop_ids=(258,), pad_id=PAD)

    def temp(prompt_ids, prompt_mask, g):
        lowered = sample_tokens.lower(graphdef, params, prompt_ids, prompt_mask,
                                      jax.random.key(0), num_samples=g, **kw)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    shared = temp(ids, mask, 16)
    copies = temp(np.repeat(ids, 16, 0), np.repeat(mask, 16, 0), 1)
    assert shared < 0.5 * copies, (shared, copies)


@pytest.mark.parametrize("g", [1, 4])  # the repeated-cache and the shared-prompt layouts
def test_ragged_decode_equals_full_width(g):
    """64 new tokens decode in 3 segments attending over 16, 32 and 64 generated slots; the
    same samples as attending over all of them every step."""
    graphdef, params = nnx.split(init_model(tiny_config("llama"), seed=0))
    rng = np.random.default_rng(0)
    ids, mask = left_pad([list(rng.integers(3, 250, rng.integers(2, 9))) for _ in range(2)],
                         PAD, WIDTH)
    kw = dict(num_samples=g, max_new_tokens=64, stop_ids=(258,), pad_id=PAD)
    ragged = sample_tokens(graphdef, params, ids, mask, jax.random.key(5), ragged=True, **kw)
    full = sample_tokens(graphdef, params, ids, mask, jax.random.key(5), ragged=False, **kw)
    np.testing.assert_array_equal(np.asarray(ragged.tokens), np.asarray(full.tokens))
    assert np.asarray(full.mask).sum() > 2 * 3 * g * 16  # rows run into the later segments
    assert float(jnp.max(jnp.abs(ragged.logps - full.logps))) < 2e-6


def test_generate_through_the_engine(setup):
    """`generate(slots=...)` (`alignax sample --slots`, ADPA's `sampling.slots`): greedy
    samples do not depend on the keys, so the engine's equal the batched sampler's."""
    model, prompts, _ = setup
    kw = dict(max_new_tokens=N, eos_id=258, pad_id=PAD, temperature=0.0, num_samples=2,
              stop_ids=STOPS)
    batched = generate(model, prompts, batch_size=4, **kw)
    engine = generate(model, prompts, slots=3, **kw)
    np.testing.assert_array_equal(engine.tokens, batched.tokens)
    np.testing.assert_array_equal(engine.mask, batched.mask)
    np.testing.assert_allclose(engine.logps, batched.logps, rtol=0, atol=2e-6)
    assert len(set(batched.mask.sum(1))) > 2
