"""The DPO family: every `loss_type` of TRL 1.16.0's `DPOTrainer`, as pure per-pair functions.

Every loss takes summed completion log-probs `[...]` of the policy and the reference, and returns
the loss per pair `[...]`. Leading axes broadcast, so `[H, B]` inputs give one loss per head and
pair. The two batch-coupled losses (`aot`, `aot_unpaired`) and `sft` treat the **last** axis as
the batch. The maths runs in float32 at least (bf16 inputs are upcast), float64 under x64.

`PREFERENCE_LOSSES` maps TRL's `loss_type` names to wrappers with one common signature (see
`_registered`); `mixed_preference_loss` combines several with weights, as TRL does for a list of
loss types (MPO). TRL 1.16 averages the per-pair losses over the batch.

References:
  DPO (Rafailov et al. 2023, arXiv 2305.18290), cDPO (Mitchell 2023), IPO (Azar et al. 2023,
  arXiv 2310.12036), SLiC hinge (Zhao et al. 2023), EXO (Ji et al. 2024, arXiv 2402.00856),
  NCA (Chen et al. 2024, arXiv 2402.05369), robust DPO (Chowdhury et al. 2024, arXiv 2403.00409),
  BCO (Jung et al. 2024), SPPO (Wu et al. 2024, arXiv 2405.00675), AOT (Melnyk et al. 2024,
  arXiv 2406.05882), APO (D'Oosterlinck et al. 2024, arXiv 2408.06266), DiscoPOP (Chris Lu et al.
  2024, arXiv 2406.08414), f-DPO (Wang et al. 2023, arXiv 2309.16240), WPO (Zhou et al. 2024,
  arXiv 2406.11827), LD-DPO (Liu et al. 2024, arXiv 2409.06411), MPO (Wang et al. 2024).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from alignax.losses._util import as_float, require

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def f_divergence_score(logratios, *, f_divergence_type: str = "reverse_kl",
                       f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """Maps a policy/reference log-ratio rho to the f-DPO score u(rho) (Wang et al. 2023).

    Args:
      logratios: `[...]` rho = log pi(y|x) - log pi_ref(y|x), summed over completion tokens.
      f_divergence_type: one of `F_DIVERGENCES`. `reverse_kl` is standard DPO, u = rho.
      f_alpha_divergence_coef: alpha of the alpha-divergence (TRL default 0.5).
    Returns:
      `[...]` the score u: reverse_kl rho; forward_kl 1 - exp(-rho); js_divergence
      log 2 + log sigmoid(rho); alpha_divergence (exp((alpha - 1) rho) - 1) / (alpha - 1), the
      exponent clamped at 80 as TRL does (alpha = 1 falls back to rho).
    """
    rho = as_float(logratios)
    if f_divergence_type == "reverse_kl":
        return rho
    if f_divergence_type == "forward_kl":
        # f'(t) = 1 - 1/t. TRL 1.10 used -exp(-rho); the constant shift cancels in u_w - u_l.
        return 1.0 - jnp.exp(-rho)
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + jax.nn.log_sigmoid(rho)
    if f_divergence_type == "alpha_divergence":
        a = f_alpha_divergence_coef
        if abs(a - 1.0) < 1e-6:
            return rho
        # Clamp as TRL does so exp() stays finite; 80 is TRL's bound for float32 and bf16.
        t = jnp.minimum((a - 1.0) * rho, 80.0)
        return jnp.expm1(t) / (a - 1.0)
    raise ValueError(
        f"unknown f_divergence_type {f_divergence_type!r}; expected one of {F_DIVERGENCES}")


def _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, f_divergence_type,
            f_alpha_divergence_coef):
    """Stop-gradient into the reference, then (u_w, u_l) and (rho_w, rho_l)."""
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = as_float(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    rho_w = chosen_logps - jax.lax.stop_gradient(ref_chosen_logps)
    rho_l = rejected_logps - jax.lax.stop_gradient(ref_rejected_logps)
    kw = dict(f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef)
    return f_divergence_score(rho_w, **kw), f_divergence_score(rho_l, **kw), rho_w, rho_l


def _smoothed_sigmoid(z, label_smoothing):
    # log_sigmoid, not log(sigmoid(.)): stable for large |z|.
    return -((1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
             + label_smoothing * jax.nn.log_sigmoid(-z))


def sigmoid_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                 beta: float = 0.1, f_divergence_type: str = "reverse_kl",
                 f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """DPO, TRL 1.16 `sigmoid`: -log sigma(beta (u_w - u_l)) (Rafailov et al. 2023, Eq. 7).

    TRL >= 0.29 dropped label smoothing from `sigmoid`; conservative DPO is `dpo_loss` here.

    Args:
      chosen_logps: `[...]` summed log pi(y_w|x) over completion tokens.
      rejected_logps: `[...]` summed log pi(y_l|x).
      ref_chosen_logps: `[...]` the same under the frozen reference (no gradient flows into it).
      ref_rejected_logps: `[...]`.
      beta: the KL-penalty temperature beta.
      f_divergence_type, f_alpha_divergence_coef: see `f_divergence_score`.
    Returns:
      `[...]` loss per pair.
    """
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    return -jax.nn.log_sigmoid(beta * (u_w - u_l))


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
             beta: float = 0.1, label_smoothing: float = 0.0) -> jax.Array:
    """Conservative DPO (cDPO; Mitchell 2023), the TRL <= 0.28 `sigmoid` loss.

    -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta), with Delta = rho_w - rho_l.
    With `label_smoothing=0` it equals `sigmoid_loss`. TRL 1.16's `sigmoid` ignores label
    smoothing; its `robust` loss is the unbiased alternative.

    Args: as `sigmoid_loss`; `label_smoothing` is eps, the assumed label-flip probability.
    Returns: `[...]` loss per pair.
    """
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    return _smoothed_sigmoid(beta * (rho_w - rho_l), label_smoothing)


def hinge_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
               beta: float = 0.1, f_divergence_type: str = "reverse_kl",
               f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """SLiC hinge loss max(0, 1 - beta (u_w - u_l)) (Zhao et al. 2023). Shapes as `sigmoid_loss`."""
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    return jax.nn.relu(1.0 - beta * (u_w - u_l))


def _per_token(score, lengths):
    return score / jnp.maximum(as_float(lengths), 1.0)


def ipo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
             chosen_lengths, rejected_lengths, beta: float = 0.1,
             f_divergence_type: str = "reverse_kl",
             f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """IPO (Azar et al. 2023, Eq. 17): (u_w/|y_w| - u_l/|y_l| - 1/(2 beta))^2.

    Scores are divided by the completion lengths (clamped at 1), as TRL does and the IPO authors
    confirmed; beta plays the role of the paper's tau.

    Args:
      chosen_lengths: `[...]` completion-token counts of y_w. rejected_lengths: of y_l.
      Others as `sigmoid_loss`.
    Returns: `[...]` loss per pair.
    """
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    delta = _per_token(u_w, chosen_lengths) - _per_token(u_l, rejected_lengths)
    return (delta - 1.0 / (2.0 * beta)) ** 2


def sigmoid_norm_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                      chosen_lengths, rejected_lengths, beta: float = 0.1,
                      f_divergence_type: str = "reverse_kl",
                      f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """Length-normalised DPO: -log sigma(beta (u_w/|y_w| - u_l/|y_l|)). Args as `ipo_loss`."""
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    delta = _per_token(u_w, chosen_lengths) - _per_token(u_l, rejected_lengths)
    return -jax.nn.log_sigmoid(beta * delta)


def exo_pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  beta: float = 0.1, label_smoothing: float = 1e-3,
                  f_divergence_type: str = "reverse_kl",
                  f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """EXO-pref (Ji et al. 2024, Eq. 16): KL(q_theta || p_eps) over {chosen, rejected}.

    q_w = sigma(beta delta), q_l = sigma(-beta delta), target (1 - eps, eps). Needs eps > 0 (the
    paper uses 1e-3); TRL 1.16 raises for eps = 0 and so does this function.

    Args: as `sigmoid_loss`; `label_smoothing` is eps. Returns: `[...]` loss per pair.
    """
    if not label_smoothing > 0.0:
        raise ValueError("exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    z = beta * (u_w - u_l)
    log_qw, log_ql = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    return (jnp.exp(log_qw) * (log_qw - math.log1p(-label_smoothing))
            + jnp.exp(log_ql) * (log_ql - math.log(label_smoothing)))


def nca_pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  beta: float = 0.1) -> jax.Array:
    """NCA (Chen et al. 2024): -log s(b rho_w) - 1/2 log s(-b rho_w) - 1/2 log s(-b rho_l)."""
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    r_w, r_l = beta * rho_w, beta * rho_l
    return (-jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w)
            - 0.5 * jax.nn.log_sigmoid(-r_l))


def robust_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                beta: float = 0.1, label_smoothing: float = 0.0,
                f_divergence_type: str = "reverse_kl",
                f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate eps in [0, 0.5).

    [-(1 - eps) log sigma(beta delta) + eps log sigma(-beta delta)] / (1 - 2 eps).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust needs label_smoothing in [0, 0.5), got {label_smoothing}")
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    z = beta * (u_w - u_l)
    return ((-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
             + label_smoothing * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * label_smoothing))


def bco_pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  beta: float = 0.1) -> jax.Array:
    """BCO on pairs, TRL >= 0.29 form: -log s(beta rho_w) - log s(-beta rho_l).

    TRL <= 0.28 also subtracted a running mean of the implicit reward; 1.16 does not.
    """
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    return -jax.nn.log_sigmoid(beta * rho_w) - jax.nn.log_sigmoid(-beta * rho_l)


def sppo_hard_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                   beta: float = 0.1) -> jax.Array:
    """SPPO, hard-label form (Wu et al. 2024, Eq. 4.7 with P = 1 / 0).

    (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2.
    """
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    return (rho_w - 0.5 / beta) ** 2 + (rho_l + 0.5 / beta) ** 2


def aot_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
             beta: float = 0.1, label_smoothing: float = 0.0) -> jax.Array:
    """AOT, paired (Melnyk et al. 2024): distributional alignment via sorting over the batch.

    The policy margins l(y_w) - l(y_l) and the reference margins are sorted separately along the
    **last axis** (the batch) and matched by rank; then the smoothed sigmoid loss.

    Returns: `[..., B]` loss per rank (its batch mean is TRL's loss).
    """
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = as_float(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    ref_margin = jax.lax.stop_gradient(ref_chosen_logps - ref_rejected_logps)
    d = jnp.sort(chosen_logps - rejected_logps, axis=-1) - jnp.sort(ref_margin, axis=-1)
    return _smoothed_sigmoid(beta * d, label_smoothing)


def aot_unpaired_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                      beta: float = 0.1, label_smoothing: float = 0.0) -> jax.Array:
    """AOT, unpaired (`aot_pair` up to TRL 0.27): sort rho_w and rho_l separately (last axis)."""
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    d = jnp.sort(rho_w, axis=-1) - jnp.sort(rho_l, axis=-1)
    return _smoothed_sigmoid(beta * d, label_smoothing)


def apo_zero_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  beta: float = 0.1) -> jax.Array:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): 1 - s(beta rho_w) + s(beta rho_l)."""
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    return 1.0 - jax.nn.sigmoid(beta * rho_w) + jax.nn.sigmoid(beta * rho_l)


def apo_down_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  beta: float = 0.1) -> jax.Array:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): s(beta rho_w) + 1 - s(beta (rho_w - rho_l))."""
    _, _, rho_w, rho_l = _scores(chosen_logps, rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, "reverse_kl", 0.5)
    return jax.nn.sigmoid(beta * rho_w) + 1.0 - jax.nn.sigmoid(beta * (rho_w - rho_l))


def discopop_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  beta: float = 0.1, discopop_tau: float = 0.05,
                  f_divergence_type: str = "reverse_kl",
                  f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """DiscoPOP log-ratio modulated loss (Lu et al. 2024, Eq. 5).

    z = beta delta, m = sigma(z / tau); loss (1 - m)(-log sigma z) + m exp(-z).
    """
    u_w, u_l, _, _ = _scores(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                             f_divergence_type, f_alpha_divergence_coef)
    z = beta * (u_w - u_l)
    m = jax.nn.sigmoid(z / discopop_tau)
    return (1.0 - m) * -jax.nn.log_sigmoid(z) + m * jnp.exp(-z)


def sft_pair_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  chosen_lengths, f_divergence_type: str = "reverse_kl",
                  f_alpha_divergence_coef: float = 0.5) -> jax.Array:
    """TRL's `sft` loss type: NLL of the chosen completions, token-mean over the batch.

    -sum_b l(y_w,b) / sum_b |y_w,b| over the **last axis**, broadcast to every pair (so its batch
    mean is the scalar NLL). Combined with `sigmoid` it is RPO (`loss_type=["sigmoid", "sft"]`).

    Args:
      chosen_logps: `[..., B]` summed chosen log-probs; chosen_lengths: `[..., B]` token counts.
      The other arguments are ignored (kept for the common signature). TRL accepts an
      f-divergence with `sft` so that RPO works with f-DPO; it does not change the NLL.
    Returns: `[..., B]`.
    """
    del rejected_logps, ref_chosen_logps, ref_rejected_logps
    del f_divergence_type, f_alpha_divergence_coef
    chosen_logps, lengths = as_float(chosen_logps, chosen_lengths)
    nll = -jnp.sum(chosen_logps, axis=-1, keepdims=True) / jnp.sum(lengths, axis=-1, keepdims=True)
    return jnp.broadcast_to(nll, chosen_logps.shape)


# ---------------------------------------------------------------------------------------------
# Registry: TRL loss_type name -> function with one common signature.

COMMON_KWARGS = {
    "beta": 0.1,
    "chosen_lengths": None,
    "rejected_lengths": None,
    "label_smoothing": 0.0,
    "f_divergence_type": "reverse_kl",
    "f_alpha_divergence_coef": 0.5,
    "discopop_tau": 0.05,
}


_ALWAYS_PASSABLE = ("beta", "chosen_lengths", "rejected_lengths")


def _registered(name: str, fn: Callable) -> Callable:
    """Wraps `fn` to the common registry signature.

    `fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta=0.1,
    chosen_lengths=None, rejected_lengths=None, label_smoothing=0.0, f_divergence_type=
    "reverse_kl", f_alpha_divergence_coef=0.5, discopop_tau=0.05) -> [...]`.

    Lengths (data) and `beta` may always be passed. Any other common hyper-parameter that `fn`
    does not use must stay at its default; anything else is an error (as TRL rejects
    f-divergences on the losses that ignore them), so a config never silently trains another loss.
    """
    accepted = set(inspect.signature(fn).parameters)

    def wrapped(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kwargs):
        unknown = set(kwargs) - set(COMMON_KWARGS)
        if unknown:
            raise TypeError(f"loss {name!r} got unknown arguments {sorted(unknown)}; "
                            f"common arguments are {sorted(COMMON_KWARGS)}")
        # The registry's defaults are TRL's (e.g. label_smoothing=0), whatever `fn`'s own are.
        call = {k: v for k, v in COMMON_KWARGS.items() if k in accepted}
        for key, value in kwargs.items():
            if key in accepted:
                if key.endswith("_lengths"):
                    value = require(value, key, name)
                call[key] = value
            elif key in _ALWAYS_PASSABLE:
                continue  # data, or beta that every config carries: ignored where unused
            elif value != COMMON_KWARGS[key]:
                raise ValueError(f"loss {name!r} does not use {key}={value!r} (TRL 1.16 "
                                 f"semantics); leave it at {COMMON_KWARGS[key]!r}")
        for key in sorted(accepted & {"chosen_lengths", "rejected_lengths"}):
            require(call[key], key, name)
        return fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **call)

    wrapped.__name__ = f"{name}_preference_loss"
    wrapped.__qualname__ = wrapped.__name__
    wrapped.__doc__ = (f"TRL loss_type {name!r} with the common signature; see "
                       f"`{fn.__name__}`.\n\n{fn.__doc__ or ''}")
    wrapped.__wrapped__ = fn
    wrapped.uses = frozenset(accepted & set(COMMON_KWARGS))
    return wrapped


_LOSSES = {
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "exo_pair": exo_pair_loss,
    "nca_pair": nca_pair_loss,
    "robust": robust_loss,
    "bco_pair": bco_pair_loss,
    "sppo_hard": sppo_hard_loss,
    "aot": aot_loss,
    "aot_unpaired": aot_unpaired_loss,
    "apo_zero": apo_zero_loss,
    "apo_down": apo_down_loss,
    "discopop": discopop_loss,
    "sft": sft_pair_loss,
    "sigmoid_norm": sigmoid_norm_loss,
}

PREFERENCE_LOSSES: dict[str, Callable] = {k: _registered(k, f) for k, f in _LOSSES.items()}


def register_preference_loss(name: str, fn: Callable, *, overwrite: bool = False) -> Callable:
    """Adds a user loss to `PREFERENCE_LOSSES` (e.g. from a notebook); returns the wrapper.

    `fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, ...)` may take
    any subset of the common keyword arguments.
    """
    if name in PREFERENCE_LOSSES and not overwrite:
        raise ValueError(f"preference loss {name!r} is already registered (pass overwrite=True)")
    PREFERENCE_LOSSES[name] = _registered(name, fn)
    return PREFERENCE_LOSSES[name]


def get_preference_loss(name: str) -> Callable:
    """Looks a loss up by TRL name, with an error that lists the known names."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown preference loss {name!r}; known: "
                         f"{', '.join(sorted(PREFERENCE_LOSSES))}") from None


def mixed_preference_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                          loss_types: str | Sequence[str] = ("sigmoid",),
                          loss_weights: Sequence[float] | None = None,
                          **kwargs) -> jax.Array:
    """Weighted sum of several registered losses per pair (MPO, Wang et al. 2024; TRL list form).

    sum_j w_j loss_j(pair); its batch mean equals TRL's sum_j w_j mean_batch(loss_j).

    Args:
      loss_types: one name or a list of `PREFERENCE_LOSSES` names.
      loss_weights: one weight per type (default 1 each).
      **kwargs: the common keyword arguments, passed to every type.
    Returns: `[...]` loss per pair.
    """
    if isinstance(loss_types, str):
        loss_types = (loss_types,)
    if loss_weights is None:
        loss_weights = (1.0,) * len(loss_types)
    if len(loss_weights) != len(loss_types):
        raise ValueError(f"loss_weights has {len(loss_weights)} entries for "
                         f"{len(loss_types)} loss_types {list(loss_types)}")
    fns = [get_preference_loss(name) for name in loss_types]
    # As TRL: a hyper-parameter goes to the types that use it (label smoothing to `robust`,
    # not to `sigmoid`), and one that no type uses is an error.
    used = set().union(*(getattr(f, "uses", COMMON_KWARGS.keys()) for f in fns))
    for key, value in kwargs.items():
        if (key in COMMON_KWARGS and key not in used and key not in _ALWAYS_PASSABLE
                and value != COMMON_KWARGS[key]):
            raise ValueError(f"none of the loss types {list(loss_types)} uses {key}={value!r}")
    total = 0.0
    for fn, weight in zip(fns, loss_weights):
        uses = getattr(fn, "uses", COMMON_KWARGS.keys())
        own = {k: v for k, v in kwargs.items() if k in uses or k in _ALWAYS_PASSABLE}
        loss = fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **own)
        total = total + weight * loss
    return total
