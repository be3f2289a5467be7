"""The FLOPs ratio at equal accuracy: below both the bench harness (its table's notes) and the
ablations (the budget ablation's figure), so that imports between them run one way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError


def flops_ratio(rows: Sequence[dict], family: str = "MVP", reference: str | Sequence[str] = "IFP", search: bool = False) -> list[dict]:
    """For each J of ``family``: its mean accuracy and training TFLOPs (plus its search's with
    ``search``), the TFLOPs the ``reference`` method needs for that accuracy (its mean accuracy
    against mean TFLOPs, interpolated linearly in log FLOPs between the points no cheaper point
    beats: a dip does not count against the reference) and their ratio; also the reference's
    iterations at that point (interpolated the same way), for the ratio in images seen.
    ``reference`` may name several families: their points are pooled, so the curve is the upper
    envelope of them all (the best conventional pipeline at each accuracy).
    ``bound`` says when the accuracy lies outside the reference's range: ``>`` (the ratio is at
    least the figure: the reference never got there) or ``<``."""
    def curve(families):
        points = [(fam, x) for fam in families for x in sorted({r["x"] for r in rows if r["family"] == fam})]
        sel = [[r for r in rows if r["family"] == fam and r["x"] == x] for fam, x in points]
        return [x for _, x in points], [float(np.mean([r["accuracy"] for r in s])) for s in sel], \
            [float(np.mean([r["tflops"] + (r.get("search_tflops", 0.0) if search else 0.0) for r in s])) for s in sel]

    references = [reference] if isinstance(reference, str) else list(reference)
    ref_x, ref_acc, ref_tf = curve(references)
    if not ref_acc:
        raise ConfigError(f"no {' or '.join(references)} rows to compare with")
    order = np.argsort(ref_tf)
    tf, acc, its = np.log(np.array(ref_tf)[order]), np.array(ref_acc)[order], np.log(np.array(ref_x, dtype=float)[order])
    front = [i for i in range(len(acc)) if i == 0 or acc[i] > acc[:i].max()]  # points no cheaper point beats
    tf, acc, its = tf[front], acc[front], its[front]
    out = []
    for x, a, f in zip(*curve([family])):
        if a > acc[-1]:
            i, t, bound = len(acc) - 1, 0.0, ">"
        elif a <= acc[0]:
            i, t, bound = 0, 0.0, "<" if a < acc[0] else "="
        else:
            i = int(np.searchsorted(acc, a)) - 1  # acc[i] < a <= acc[i + 1]
            t, bound = (a - acc[i]) / (acc[i + 1] - acc[i]), "="
        at = (lambda v: float(np.exp(v[i] + t * (v[i + 1] - v[i])))) if t else (lambda v: float(np.exp(v[i])))
        out.append({"family": family, "x": x, "accuracy": a, "tflops": f, "reference_tflops": at(tf), "ratio": at(tf) / f,
                    "reference_iterations": at(its), "bound": bound, "search": search})
    return out
