"""Where medkeras' first pass from DICOM spends its time: listing (`load_dataset`: headers), decoding
(`split_arrays`: pixels, window, resize) and one augmented epoch, beside the per-file loop, in one process.

One process, so the loop runs after TensorFlow is loaded (slower than alone: `bench.pipeline` has the fair ratio);
the stage times are what this is for.

    python -m bench.first_pass_stages --source ../shared/data/lung_pet_ct_dx_A0001 --repeat 4 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/lung_pet_ct_dx_A0001"))
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from medkeras._quiet import quiet_tensorflow

    quiet_tensorflow()
    from bench.pipeline import _train_items, data_cfg, loop_epoch, manifest
    from medkeras.data.pipeline import make_tf_dataset, split_arrays
    from medkeras.data.sources import load_dataset

    m = manifest(args.source.resolve(), Path(tempfile.mkdtemp()) / "m.csv", args.repeat)
    loop = loop_epoch(*_train_items(m), 224, 32)
    cfg = data_cfg(m, 224)
    for _ in range(args.rounds):
        t = time.perf_counter()
        n_loop = loop()
        t_loop = time.perf_counter() - t
        t0 = time.perf_counter()
        ds = load_dataset(cfg)
        t1 = time.perf_counter()
        images, labels, _, _ = split_arrays(ds.splits["train"], cfg, verbose=False)
        t2 = time.perf_counter()
        n = sum(len(x) for x, _ in make_tf_dataset(images, labels, cfg, 32, training=True))
        t3 = time.perf_counter()
        print(f"loop {n_loop / t_loop:.0f}/s | {n} images: listing {t1 - t0:.3f} s, decoding {t2 - t1:.3f} s, "
              f"epoch {t3 - t2:.3f} s, {n / (t3 - t0):.0f}/s", flush=True)


if __name__ == "__main__":
    main()
