"""The worked example of every loss, printed as a table (`alignax demo`).

Until the training demo lands, `make demo` shows the loss library on the worked pair of
ALGORITHMS.md §4: l(y_w)=-10, l(y_l)=-12, l_ref(y_w)=-11, l_ref(y_l)=-11.5, |y_w|=5, |y_l|=8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignax import losses

# Extra hyper-parameters for the loss types that need them (TRL defaults otherwise).
_EXTRA = {"exo_pair": {"label_smoothing": 1e-3}, "robust": {"label_smoothing": 0.1}}


def loss_table() -> list[tuple[str, float]]:
    """(name, value) for every registered preference loss and the other losses on the example."""
    pair = [jnp.array([v]) for v in (-10.0, -12.0, -11.0, -11.5)]
    lengths = dict(chosen_lengths=jnp.array([5.0]), rejected_lengths=jnp.array([8.0]))
    rows = []
    for name, fn in sorted(losses.PREFERENCE_LOSSES.items()):
        kw = dict(beta=0.1, **lengths, **_EXTRA.get(name, {}))
        rows.append((f"dpo/{name}", float(jax.jit(lambda *a, f=fn, k=kw: f(*a, **k))(*pair)[0])))
    rows.append(("cdpo (label_smoothing=0.1)",
                 float(losses.dpo_loss(*pair, beta=0.1, label_smoothing=0.1)[0])))
    rows.append(("simpo (beta=2, gamma=0.5)",
                 float(losses.simpo_loss(pair[0], pair[1], lengths["chosen_lengths"],
                                         lengths["rejected_lengths"], beta=2.0, gamma=0.5)[0])))
    rows.append(("cpo preference term", float(losses.cpo_loss(pair[0], pair[1], beta=0.1)[0])))
    rows.append(("orpo odds-ratio term",
                 float(losses.orpo_loss(pair[0], pair[1], lengths["chosen_lengths"],
                                        lengths["rejected_lengths"], beta=0.1)[0])))
    # KTO example of ALGORITHMS.md §5c.
    kl = losses.kto_kl_estimate(jnp.array([0.5, 0.2, 0.1, 0.4]), jnp.zeros(4))
    kto = losses.kto_loss(jnp.array([-10.0, -8.0, -12.0, -9.0]),
                          jnp.array([-11.0, -8.5, -11.0, -9.5]),
                          jnp.array([True, True, False, False]), kl, beta=0.1)
    rows.append(("kto (batch of 4)", float(kto.mean())))
    bt = losses.bradley_terry_loss(jnp.array([1.0, 0.2]), jnp.array([0.5, 0.4]))
    rows.append(("reward model bradley-terry", float(bt.mean())))
    return rows


def main() -> int:
    print("alignax loss library on the worked pair of ALGORITHMS.md §4 (beta=0.1):")
    rows = loss_table()
    width = max(len(n) for n, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:10.6f}")
    return 0
