"""Best-of-N: the chosen candidate is the scorer's argmax among exactly the samples plain
sampling draws; implicit rewards equal beta x (log pi - log pi_ref) from full-vocabulary
forwards; reward-model scores equal the model on prompt + completion; compute accounting; CLI."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from alignax import cli, decoding
from alignax.models import init_model, tiny_config
from alignax.models.reward_model import RewardModel
from alignax.models.tokenizers import ByteTokenizer
from alignax.sampling import generate, left_pad, sequences
from tests import hf_dirs

TOK = ByteTokenizer()
PROMPTS = [TOK.encode("12+7=", add_bos=True), TOK.encode("3*4=", add_bos=True)]


@pytest.fixture(scope="module")
def model():
    return init_model(tiny_config("llama"), seed=0)


def _sample(model, n):
    return generate(model, PROMPTS, max_new_tokens=6, eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                    temperature=1.0, num_samples=n, seed=3)


def test_best_of_n_picks_the_verifier_argmax_of_the_same_samples(model):
    # A verifier that likes the digit count of the completion.
    digits = lambda prompts, completions: [float(sum(c.isdigit() for c in x))
                                           for x in completions]
    scorer = decoding.verifier_scorer(digits, ["12+7=", "3*4="])
    out = decoding.best_of_n(model, PROMPTS, n=4, scorer=scorer, tokenizer=TOK,
                             max_new_tokens=6, seed=3)
    plain = _sample(model, 4)
    from alignax.sampling import decode_completions

    texts = decode_completions(TOK, plain.tokens, plain.mask, stop_ids=(TOK.eos_id,))
    want = np.array(digits(None, texts)).reshape(2, 4)
    np.testing.assert_array_equal(out.scores, want)
    for i in range(2):
        j = int(np.argmax(want[i]))
        assert out.chosen[i] == j
        np.testing.assert_array_equal(out.tokens[i], plain.tokens[i * 4 + j])
    # Verifier scoring is free: prompts once + every decoded token.
    assert out.forward_tokens == sum(map(len, PROMPTS)) + int(plain.mask.sum())
    assert out.forward_tokens_per_output_token == pytest.approx(
        out.forward_tokens / out.mask.sum())


def test_implicit_reward_is_beta_times_the_log_ratio(model):
    reference = init_model(tiny_config("llama"), seed=1)
    scorer = decoding.implicit_reward_scorer(model, reference, beta=0.5)
    out = decoding.best_of_n(model, PROMPTS, n=3, scorer=scorer, tokenizer=TOK,
                             max_new_tokens=6, seed=3)
    plain = _sample(model, 3)
    ids, pmask = left_pad([p for p in PROMPTS for _ in range(3)], TOK.pad_id)
    rows, attn = sequences(ids, pmask, plain.tokens, plain.mask)
    p = ids.shape[1]

    def seq_logps(m):  # the full [R, S, V] log-softmax: an independent path
        logp = jax.nn.log_softmax(np.asarray(m(rows, attn)), axis=-1)
        tok = np.take_along_axis(np.asarray(logp)[:, p - 1:-1], rows[:, p:, None], -1)[..., 0]
        return (tok * plain.mask).sum(-1)

    want = 0.5 * (seq_logps(model) - seq_logps(reference))
    np.testing.assert_allclose(out.scores.reshape(-1), want, rtol=1e-4, atol=1e-4)
    # Two models score every prompt + completion token.
    decoded = int(plain.mask.sum())
    assert out.forward_tokens == sum(map(len, PROMPTS)) + decoded + 2 * (int(pmask.sum())
                                                                         + decoded)


def test_reward_model_scores_prompt_and_completion(model):
    rm = RewardModel(init_model(tiny_config("llama"), seed=2), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(rm)
    out = decoding.best_of_n(model, PROMPTS, n=2, tokenizer=TOK, max_new_tokens=6, seed=3,
                             scorer=decoding.reward_model_scorer(graphdef, params))
    plain = _sample(model, 2)
    ids, pmask = left_pad([p for p in PROMPTS for _ in range(2)], TOK.pad_id)
    want = np.asarray(rm(*sequences(ids, pmask, plain.tokens, plain.mask)))
    np.testing.assert_allclose(out.scores.reshape(-1), want, rtol=1e-5, atol=1e-6)
    assert list(out.chosen) == [int(np.argmax(want[:2])), int(np.argmax(want[2:]))]


def test_cli_best_of_n(tmp_path, capsys):
    path = hf_dirs.write_model(str(tmp_path / "model"))
    code = cli.main(["sample", "--model", path, "--prompt", "12+7=", "--prompt", "3*4=",
                     "--best-of", "3", "--verifier", "regex:\\d", "--max-new-tokens", "5"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["12+7=", "3*4="]
    for x in lines:
        assert len(x["scores"]) == 3 and x["score"] == max(x["scores"])
        assert x["forward_tokens_per_output_token"] > 1
    assert cli.main(["sample", "--model", path, "--prompt", "1+1=", "--best-of", "3"]) == 2
    assert "exactly one scorer" in capsys.readouterr().err
