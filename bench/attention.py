"""A series model's slice attention served beside its logits: one pass (`models.study.with_attention`) against the
logits alone and against logits and attention computed apart (what `predict` did before: every encoder ran twice).

An ensemble of two series members (gated attention over --slices slices) on random pixels, each way a
`tf.function`, timed in the same process, rounds interleaved; reports seconds per batch and the ratio to the
logits alone, and checks the one-pass outputs equal the two apart.

    python -m bench.attention --backbone resnet18 --size 64 --slices 16 --batch 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="attention")
    args = parser.parse_args()

    from medkeras._quiet import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    from bench.common import save
    from medkeras.models.ensemble import build_ensemble
    from medkeras.models.study import attention_models, build_series_member, with_attention

    load = [os.getloadavg()[0]]
    members = [build_series_member(args.backbone, 2, args.size, args.slices, member_name=n) for n in ("a", "b")]
    model = build_ensemble(members, args.size)
    apart = list(attention_models(model).values())
    both = with_attention(model)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (args.batch, args.slices, args.size, args.size, 3)),
                    tf.float32)
    ways = {
        "logits alone": tf.function(lambda v: model(v, training=False)),
        "logits and attention apart": tf.function(
            lambda v: (model(v, training=False), tf.add_n([m(v, training=False) for m in apart]) / len(apart))),
        "logits and attention in one pass (with_attention)": tf.function(lambda v: both(v, training=False)),
    }
    logits, weights = (np.asarray(v) for v in ways["logits and attention in one pass (with_attention)"](x))
    ref_logits, ref_weights = (np.asarray(v) for v in ways["logits and attention apart"](x))
    gap = float(max(np.abs(logits - ref_logits).max(), np.abs(weights - ref_weights).max()))
    for fn in ways.values():
        fn(x)  # traced
    times = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            for _ in range(args.repeats):
                out = fn(x)
            np.asarray(out[0] if isinstance(out, (tuple, list)) else out)
            times[name].append((time.perf_counter() - start) / args.repeats)
    load.append(os.getloadavg()[0])
    base = float(np.median(times["logits alone"]))
    result = {"load": load, "max_abs_gap_one_pass_vs_apart": gap, "ways": {
        name: {"s_per_batch": float(np.median(t)), "vs_logits_alone": float(np.median(t)) / base, "rounds": t}
        for name, t in times.items()}}
    for name, row in result["ways"].items():
        print(f"{row['vs_logits_alone']:.2f}x  {row['s_per_batch']:.3f} s  {name}")
    print("outputs gap:", gap, " load:", load, "\nwrote", save(args.name, result))


if __name__ == "__main__":
    main()
