"""DCKD and ADPA: worked numbers (docs/algorithms.md, DCKD and ADPA), the TRL GKD golden (full
vocabulary), invariants, grads."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignax import losses
from alignax.losses import reduce

GKD = json.loads((pathlib.Path(__file__).parent.parent / "testdata" /
                  "gkd_goldens.json").read_text())

# docs/algorithms.md, DCKD and ADPA: the worked position, vocabulary 5, k = 2.
STUDENT = np.array([0.1, 0.5, 0.1, 0.2, 0.1])
TEACHER = np.array([0.04, 0.6, 0.03, 0.3, 0.03])
TOP_IDS = np.array([1, 3])


def test_dckd_topk_worked(x64):
    # Teacher top-2 (0.6, 0.3) + rest 0.1; student gathered (0.5, 0.2) + rest 0.3:
    # 0.6 ln(0.6/0.5) + 0.3 ln(0.3/0.2) + 0.1 ln(0.1/0.3) = 0.121171.
    s = losses.gather_topk_logps(np.log(STUDENT), TOP_IDS)
    np.testing.assert_allclose(jnp.exp(s), [0.5, 0.2], rtol=1e-12)
    kl = jax.jit(losses.dckd_topk_kl)(s, TEACHER[TOP_IDS])
    np.testing.assert_allclose(kl, 0.121171, atol=1e-6)
    stored_rest = losses.dckd_topk_kl(s, TEACHER[TOP_IDS], np.array(0.1))  # same mass, given
    np.testing.assert_allclose(stored_rest, kl, rtol=1e-12)


def test_dckd_full_vocabulary_worked(x64):
    # Full teacher [0.04, 0.6, 0.03, 0.3, 0.03] vs the same student: KL = 0.122142.
    kl = jax.jit(losses.dckd_full_kl)(np.log(STUDENT), np.log(TEACHER))
    np.testing.assert_allclose(kl, 0.122142, atol=1e-6)


@pytest.mark.parametrize("case", GKD["cases"], ids=lambda c: f"T{c['temperature']}")
def test_dckd_full_matches_trl_gkd(case, x64):
    # TRL 1.16.0 GKDTrainer.generalized_jsd_loss(beta=0): token mean of KL(teacher || student).
    assert GKD["trl_version"] == "1.16.0"
    student, teacher = np.asarray(case["student_logits"]), np.asarray(case["teacher_logits"])
    mask = np.asarray(case["mask"], dtype=np.float64)

    def loss(s):
        return reduce.token_mean(losses.dckd_full_kl(s, teacher,
                                                     temperature=case["temperature"]), mask)

    value, grad = jax.jit(jax.value_and_grad(loss))(student)
    np.testing.assert_allclose(value, case["loss"], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(grad, case["grad_student_logits"], rtol=1e-6, atol=1e-12)


def test_identical_distributions_zero_kl_and_zero_gradient(x64):
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
    full = jax.jit(jax.value_and_grad(lambda s: losses.dckd_full_kl(s, logits).sum()))
    value, grad = full(logits)
    np.testing.assert_allclose(value, 0.0, atol=1e-12)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    # Top-k: the student's top-3 equals the teacher's, rests equal too.
    ids = jnp.argsort(-logits, axis=-1)[..., :3]
    teacher_top = jnp.exp(losses.gather_topk_logps(logits, ids))

    def topk(s):
        return losses.dckd_topk_kl(losses.gather_topk_logps(s, ids), teacher_top).sum()

    value, grad = jax.jit(jax.value_and_grad(topk))(logits)
    np.testing.assert_allclose(value, 0.0, atol=1e-12)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)


def test_dckd_topk_gradients(x64):
    logits = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 9))
    teacher = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(2), (2, 4, 9)))
    ids = jnp.argsort(-teacher, axis=-1)[..., :4]
    top = jnp.take_along_axis(teacher, ids, -1)
    check_grads(jax.jit(lambda s: losses.dckd_topk_kl(losses.gather_topk_logps(s, ids), top)),
                (logits,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    check_grads(jax.jit(lambda s: losses.dckd_full_kl(s, jnp.log(teacher))), (logits,), order=2,
                atol=1e-6, rtol=1e-6)


def test_dckd_loss_combines_terms(x64):
    chosen_logps = np.array([[-1.0, -2.0, 0.0]])
    chosen_mask = np.array([[1.0, 1, 0]])
    chosen_kl = np.array([[0.2, 0.4, 9.0]])  # 9.0 sits on padding
    rejected_kl = np.array([[0.1, 0.3, 0.5]])
    rejected_mask = np.ones((1, 3))
    loss, metrics = jax.jit(losses.dckd_loss)(chosen_logps, chosen_mask, chosen_kl, rejected_kl,
                                              rejected_mask)
    # NLL 1.5, KL_w 0.3, KL_l 0.3: 1 x 1.5 + 1 x (0.1 x 0.3 + 0.1 x 0.3) = 1.56.
    np.testing.assert_allclose(loss, 1.56, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/chosen-sft"], 1.5, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/chosen-fkl"], 0.3, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/rejected-fkl"], 0.3, rtol=1e-12)
    only_kl, _ = losses.dckd_loss(chosen_logps, chosen_mask, chosen_kl, rejected_kl,
                                  rejected_mask, sft_weight=0.0, distill_weight=2.0,
                                  chosen_weight=1.0, rejected_weight=0.0)
    np.testing.assert_allclose(only_kl, 0.6, rtol=1e-12)  # 2 x 0.3


def test_adpa_worked(x64):
    # Margins on ids (1, 3, 0) = (0.7, -0.4, 1.6); student probs there (0.5, 0.2, 0.1).
    ids = np.array([1, 3, 0])
    s = losses.gather_topk_logps(np.log(STUDENT), ids)
    adv = np.array([0.7, -0.4, 1.6])
    paper = jax.jit(lambda s: losses.adpa_token_loss(s, adv, clamp_advantage=False))(s)
    np.testing.assert_allclose(paper, -0.43, atol=1e-12)  # -(0.35 - 0.08 + 0.16)
    # Clamped targets (0.7, 1e-8, 1 - 1e-8) plus the rest bucket (student 0.2, target 1e-8).
    code = jax.jit(losses.adpa_token_loss)(s, adv)
    np.testing.assert_allclose(code, -0.450000003, atol=1e-12)


def test_adpa_advantage_and_gradient_flows_through_student(x64):
    dpo, ref = np.log([[0.5, 0.3]]), np.log([[0.25, 0.6]])
    adv = losses.adpa_advantage(dpo, ref)
    np.testing.assert_allclose(adv, [[np.log(2.0), np.log(0.5)]], rtol=1e-12)  # log-ratio
    np.testing.assert_allclose(losses.adpa_advantage(dpo, ref, beta=0.1), 0.1 * adv, rtol=1e-12)
    logps = np.log([[0.4, 0.1]])
    # Paper form: d/d log q_v of -sum q A = -q_v A_v (no stop-gradient on the student).
    g = jax.grad(lambda s: losses.adpa_token_loss(s, adv, clamp_advantage=False).sum())(logps)
    np.testing.assert_allclose(g, -np.exp(logps) * adv, rtol=1e-12)
    check_grads(jax.jit(lambda s: losses.adpa_token_loss(s, adv)), (logps,), order=1,
                modes=("rev",), atol=1e-6, rtol=1e-6)


def test_adpa_loss_with_extras(x64):
    chosen_logps, chosen_mask = np.array([[-1.0, -3.0]]), np.ones((1, 2))
    token_losses, rejected_mask = np.array([[-0.2, -0.4, 5.0]]), np.array([[1.0, 1, 0]])
    loss, metrics = jax.jit(losses.adpa_loss)(chosen_logps, chosen_mask, token_losses,
                                              rejected_mask)
    # NLL 2 + 1.6 x mean(-0.2, -0.4) = 2 - 0.48.
    np.testing.assert_allclose(loss, 1.52, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/adpa"], -0.3, rtol=1e-12)
    rej, ref = np.array([-5.0, -6.0]), np.array([-5.5, -5.0])
    loss, metrics = losses.adpa_loss(chosen_logps, chosen_mask, token_losses, rejected_mask,
                                     rejected_logps=rej, ref_rejected_logps=ref,
                                     importance_sampling=True, kl_penalty_weight=0.5)
    weight = np.mean(np.exp(rej - ref))  # mean of e^{0.5}, e^{-1}
    penalty = np.mean(ref - rej)  # mean of (-0.5, 1) = 0.25
    np.testing.assert_allclose(loss, 2.0 + 1.6 * -0.3 * weight + 0.5 * penalty, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/importance_weight"], weight, rtol=1e-12)
    np.testing.assert_allclose(metrics["loss/kl-penalty"], penalty, rtol=1e-12)
    with pytest.raises(ValueError, match="rejected_logps"):
        losses.adpa_loss(chosen_logps, chosen_mask, token_losses, rejected_mask,
                         importance_sampling=True)
