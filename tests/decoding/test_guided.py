"""Guided decoding (ARGS / DeAL / Transfer Q*) against a plain host search that recomputes
every log-prob, continuation and value with full forwards (no KV cache, no batching, Python
beams); the two implicit-reward paths agree; indirect transfer with r_BL = r is direct
transfer; forward-token accounting; errors; CLI."""

import json

import numpy as np
import pytest
from flax import nnx

from alignax import cli, decoding
from alignax.models import init_model, tiny_config
from alignax.models.reward_model import RewardModel
from alignax.models.tokenizers import ByteTokenizer
from alignax.sampling import generate
from tests import hf_dirs

TOK = ByteTokenizer()
TEXTS = ["12+7=", "3*4=", "5-1="]
PROMPTS = [TOK.encode(t, add_bos=True) for t in TEXTS]
N = 5
WIDTH = 24  # every full forward is right-padded to this width: one compile per model


@pytest.fixture(scope="module")
def models():
    policy = init_model(tiny_config("llama"), seed=0)
    other = init_model(tiny_config("llama"), seed=1)
    rm = RewardModel(init_model(tiny_config("llama"), seed=2), rngs=nnx.Rngs(0))
    return policy, other, rm


@nnx.jit
def _forward(model, ids, mask):
    return model(ids, mask)


def _row(seq):
    ids = np.full((1, WIDTH), TOK.pad_id, np.int32)
    ids[0, :len(seq)] = seq
    mask = np.zeros((1, WIDTH), np.int32)
    mask[0, :len(seq)] = 1
    return ids, mask


def next_logp(model, seq):
    """log softmax of the next token after `seq` (a full forward)."""
    logits = np.asarray(_forward(model, *_row(seq)), np.float64)[0, len(seq) - 1]
    return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()


def rm_value(rm):
    return lambda i, prompt, comp: float(np.asarray(_forward(rm, *_row(prompt + comp)))[0])


def digits_verifier(prompts, completions):
    return [float(sum(c.isdigit() for c in x)) for x in completions]


def verifier_value(i, prompt, comp):
    text = TOK.decode([t for t in comp if t != TOK.eos_id])
    return digits_verifier([TEXTS[i]], [text])[0]


def host_search(policy, *, k, beams, lookahead, weight, value, rollout=None):
    """Guided search, written plainly: per prompt, Python beams (completion, cum log-prob,
    done, value); each live beam proposes its top-k tokens by a full forward, each candidate
    is continued greedily by `rollout` (full forwards) and valued; a finished beam stays as
    its one candidate. Returns per prompt (completion, final score)."""
    rollout = rollout or policy
    out = []
    for i, prompt in enumerate(PROMPTS):
        beam = [([], 0.0, False, 0.0)]
        for _ in range(N):
            if all(done for _, _, done, _ in beam):
                break
            cands = []
            for comp, cum, done, _val in beam:
                if done:
                    cands.append((cum + weight * value(i, prompt, comp), comp, cum, True))
                    continue
                lp = next_logp(policy, prompt + comp)
                for z in np.argsort(-lp, kind="stable")[:k]:
                    z = int(z)
                    seq = comp + [z]
                    cont = list(seq)
                    if z != TOK.eos_id:
                        for _ in range(lookahead):
                            nxt = int(np.argmax(next_logp(rollout, prompt + cont)))
                            cont.append(nxt)
                            if nxt == TOK.eos_id:
                                break
                    q = value(i, prompt, cont)
                    cands.append((cum + lp[z] + weight * q, seq, cum + lp[z],
                                  z == TOK.eos_id))
            cands.sort(key=lambda c: -c[0])
            beam = [(seq, cum, done, (total - cum) / weight if weight else 0.0)
                    for total, seq, cum, done in cands[:beams]]
        best = max(beam, key=lambda b: b[1] + weight * b[3])
        out.append((best[0], best[1] + weight * best[3]))
    return out


def _completions(out):
    return [[int(t) for t, m in zip(row, mask) if m] for row, mask in zip(out.tokens, out.mask)]


def _check(out, want):
    assert _completions(out) == [w[0] for w in want]
    np.testing.assert_allclose(out.score, [w[1] for w in want], rtol=1e-4, atol=1e-4)


def test_args_with_weight_zero_is_greedy_decoding(models):
    policy, _, rm = models
    scorer = decoding.reward_model_sequence_scorer(*nnx.split(rm))
    out = decoding.guided_decode(policy, PROMPTS, search=decoding.args_search(
        candidates=3, weight=0.0), scorer=scorer, tokenizer=TOK, max_new_tokens=N)
    greedy = generate(policy, PROMPTS, max_new_tokens=N, eos_id=TOK.eos_id, pad_id=TOK.pad_id)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    # Accounting: prompts once, each decoded token, and the reward model over prompt + text
    # so far + candidate for each of the k candidates of every live step.
    lens = [len(p) for p in PROMPTS]
    steps = greedy.mask.sum(-1)
    rm_tokens = sum(3 * (lens[i] + t + 1) for i in range(3) for t in range(int(steps[i])))
    assert out.forward_tokens == sum(lens) + int(steps.sum()) + rm_tokens


def test_args_with_a_reward_model_matches_the_host_search(models):
    policy, _, rm = models
    out = decoding.guided_decode(policy, PROMPTS, search=decoding.args_search(
        candidates=3, weight=2.0), scorer=decoding.reward_model_sequence_scorer(*nnx.split(rm)),
        tokenizer=TOK, max_new_tokens=N)
    _check(out, host_search(policy, k=3, beams=1, lookahead=0, weight=2.0, value=rm_value(rm)))


def test_deal_beam_search_with_lookahead_matches_the_host_search(models):
    policy, _, rm = models
    out = decoding.guided_decode(policy, PROMPTS, search=decoding.deal_search(
        candidates=3, beams=2, lookahead=2, weight=3.0),
        scorer=decoding.reward_model_sequence_scorer(*nnx.split(rm)), tokenizer=TOK,
        max_new_tokens=N, batch_size=2)  # two program calls, the second padded
    _check(out, host_search(policy, k=3, beams=2, lookahead=2, weight=3.0,
                            value=rm_value(rm)))


def test_transfer_q_with_a_verifier_and_a_baseline_model_matches_the_host_search(models):
    policy, baseline, _ = models
    scorer = decoding.verifier_sequence_scorer(digits_verifier, TEXTS, TOK)
    out = decoding.guided_decode(policy, PROMPTS, search=decoding.transfer_q_search(
        max_new_tokens=N, candidates=3, weight=0.5), scorer=scorer, rollout_model=baseline,
        tokenizer=TOK, max_new_tokens=N)
    _check(out, host_search(policy, k=3, beams=1, lookahead=N, weight=0.5,
                            value=verifier_value, rollout=baseline))


def test_implicit_guide_equals_the_implicit_sequence_scorer(models):
    policy, reference, _ = models
    dpo = init_model(tiny_config("llama"), seed=3)
    search = decoding.args_search(candidates=4, weight=5.0)
    kw = dict(search=search, tokenizer=TOK, max_new_tokens=N)
    guide = decoding.guided_decode(policy, PROMPTS, scorer=decoding.ImplicitGuide(
        dpo, reference, 0.5), **kw)
    full = decoding.guided_decode(policy, PROMPTS, scorer=decoding.implicit_sequence_scorer(
        dpo, reference, 0.5), **kw)
    np.testing.assert_array_equal(guide.tokens, full.tokens)
    np.testing.assert_allclose(guide.value, full.value, atol=1e-5)
    # The guide decodes alongside (2 tokens per step, no forward per candidate).
    decoded = int(guide.mask.sum())
    assert guide.forward_tokens == 3 * (sum(map(len, PROMPTS)) + decoded)
    assert full.forward_tokens > guide.forward_tokens


def test_indirect_transfer_with_the_target_as_baseline_reward_is_direct_transfer(models):
    policy, baseline, rm = models
    scorer = decoding.reward_model_sequence_scorer(*nnx.split(rm))
    search = decoding.transfer_q_search(max_new_tokens=N, candidates=2, rollouts=3,
                                        rollout_temperature=1.0, weight=2.0)
    kw = dict(search=search, scorer=scorer, rollout_model=baseline, tokenizer=TOK,
              max_new_tokens=N, seed=4)
    direct = decoding.guided_decode(policy, PROMPTS, **kw)
    indirect = decoding.guided_decode(policy, PROMPTS, baseline_scorer=scorer, **kw)
    np.testing.assert_array_equal(direct.tokens, indirect.tokens)
    np.testing.assert_allclose(direct.value, indirect.value, rtol=1e-5, atol=1e-6)
    assert indirect.forward_tokens > direct.forward_tokens  # r_BL's forwards are counted


def test_bad_searches_fail_clearly(models):
    policy, other, rm = models
    scorer = decoding.reward_model_sequence_scorer(*nnx.split(rm))
    kw = dict(scorer=scorer, tokenizer=TOK, max_new_tokens=N)
    with pytest.raises(ValueError, match="candidates .* must be >= beams"):
        decoding.guided_decode(policy, PROMPTS, search=decoding.Search(candidates=2, beams=3),
                               **kw)
    with pytest.raises(ValueError, match="temperature > 0 needs beams=1"):
        decoding.guided_decode(policy, PROMPTS, search=decoding.Search(
            candidates=4, beams=2, temperature=1.0), **kw)
    with pytest.raises(ValueError, match="rollouts > 1 needs"):
        decoding.guided_decode(policy, PROMPTS, search=decoding.Search(rollouts=2,
                                                                       lookahead=2), **kw)
    with pytest.raises(ValueError, match="rollout_model continues candidates"):
        decoding.guided_decode(policy, PROMPTS, search=decoding.args_search(),
                               rollout_model=other, **kw)
    with pytest.raises(ValueError, match="ImplicitGuide"):
        decoding.guided_decode(policy, PROMPTS, search=decoding.deal_search(), scorer=(
            decoding.ImplicitGuide(other, other, 0.1)), tokenizer=TOK, max_new_tokens=N)
    small = init_model(tiny_config("llama", vocab_size=300), seed=0)
    with pytest.raises(ValueError, match="rollout model's vocabulary .300."):
        decoding.guided_decode(policy, PROMPTS, search=decoding.deal_search(),
                               rollout_model=small, **kw)


def test_cli_guided_decoding(tmp_path, capsys):
    path = hf_dirs.write_model(str(tmp_path / "model"))
    base = ["sample", "--model", path, "--prompt", "12+7=", "--prompt", "3*4=",
            "--max-new-tokens", "4"]  # guided: keeps the best candidate by default
    assert cli.main(base + ["--decoding", "deal", "--verifier", "regex:\\d+",
                            "--candidates", "3", "--beams", "2", "--lookahead", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["12+7=", "3*4="]
    assert all(x["decoding"] == "deal" and x["forward_tokens_per_output_token"] > 1
               for x in lines)
    assert cli.main(base + ["--decoding", "tq", "--verifier", "regex:\\d+"]) == 2
    assert "--baseline DIR" in capsys.readouterr().err
    assert cli.main(base + ["--decoding", "args", "--reference", path]) == 2
    assert "--guide-policy" in capsys.readouterr().err
