"""The online trainers' resumable data state (`Rollouts`): the prompt iterator, the sampler's
key and, with async rollouts, the batch sampled during the last step for the next one, kept in
the checkpoint's JSON so a resumed run trains on it."""

from __future__ import annotations

import base64
import json

import jax
import numpy as np

from alignax import data


class Rollouts:
    """The online data state: the prompt iterator, the sampler's key and, with async
    rollouts, the pending batch (sampled during the last step for the next one)."""

    def __init__(self, prompts: data.PromptIterator, seed: int):
        self.prompts, self.key = prompts, jax.random.key(seed + 1)
        self.pending = None  # (rollout, metrics row, sampler totals, step key)
        self._before = None

    def split(self):
        self.key, step_key = jax.random.split(self.key)
        return step_key

    def _now(self) -> dict:
        return {"prompts": self.prompts.state_dict(),
                "rng": [int(x) for x in np.asarray(jax.random.key_data(self.key))]}

    def mark(self) -> None:
        """Async rollouts: remembers the state before the next batch is drawn, kept by a
        checkpoint when the pending batch cannot be (`_encode_pending`), so a resumed run
        draws that batch again."""
        self._before = self._now()

    def take_pending(self):
        pending, self.pending, self._before = self.pending, None, None
        return pending

    def state_dict(self) -> dict:
        if self.pending is None:
            return self._now()
        assert self._before is not None, "mark() the state before drawing a pending batch"
        try:  # the pending batch itself: a resumed run trains on it, as an uninterrupted one
            saved = dict(self._now(), pending=_encode_pending(self.pending))
            if _same(_decode_pending(json.loads(json.dumps(saved["pending"])))[0],
                     self.pending[0]):
                return saved
        except (TypeError, ValueError):  # texts / prompts / answers JSON cannot hold
            pass
        return self._before  # a resumed run draws the batch again

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["prompts"])
        self.key = jax.random.wrap_key_data(np.asarray(state["rng"], np.uint32))
        self.pending = _decode_pending(state["pending"]) if "pending" in state else None
        self._before = None


def _encode_pending(pending) -> dict:
    """The pending batch as JSON: numeric arrays as base64 of their bytes (exact), object
    arrays (texts, prompts, answers) as lists; TypeError if an object is not JSON-able."""
    r, row, sampled, key = pending
    arrays = {}
    for name, value in r.items():
        value = np.asarray(value)
        if value.dtype == object:
            items = value.reshape(-1).tolist()
            json.dumps(items)  # TypeError when not JSON-able
            arrays[name] = {"shape": list(value.shape), "objects": items}
        else:
            arrays[name] = {"shape": list(value.shape), "dtype": value.dtype.str,
                            "b64": base64.b64encode(np.ascontiguousarray(value).tobytes())
                            .decode("ascii")}
    number = lambda v: int(v) if isinstance(v, int | np.integer) else float(v)
    return {"rollout": arrays, "row": {k: number(v) for k, v in row.items()},
            "sampled": {k: number(v) for k, v in sampled.items()},
            "key": [int(x) for x in np.asarray(jax.random.key_data(key))]}


def _same(a: dict, b: dict) -> bool:
    """Whether two rollouts hold equal arrays (objects compared as Python values: a tuple
    that JSON turned into a list, or an int key into a string, differs)."""
    def equal(x, y):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype == object or y.dtype == object:
            return x.shape == y.shape and all(
                bool(p == q) for p, q in zip(x.reshape(-1), y.reshape(-1)))
        return x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")

    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


def _decode_pending(state: dict):
    r = {}
    for name, a in state["rollout"].items():
        if "objects" in a:
            flat = np.empty(len(a["objects"]), dtype=object)
            for i, item in enumerate(a["objects"]):
                flat[i] = item
            r[name] = flat.reshape(a["shape"])
        else:
            r[name] = np.frombuffer(base64.b64decode(a["b64"]), np.dtype(a["dtype"])
                                    ).reshape(a["shape"]).copy()
    return (r, dict(state["row"]), dict(state["sampled"]),
            jax.random.wrap_key_data(np.asarray(state["key"], np.uint32)))
