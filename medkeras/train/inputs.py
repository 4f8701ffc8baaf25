"""Step 1 of a fit, reading the data: the dataset, each split decoded once, and the batches training consumes.

Validation and test are decoded here, once, and the same arrays are validated on every epoch and scored at the
end of the run (`finish.py`): what trained is exactly what is evaluated. A prepared store's training split is
streamed instead, never held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medkeras.errors import MedkerasError
from medkeras.progress import counted


@dataclass
class RunData:
    """What training and the end of the run read."""

    dataset: object  # medkeras.data.types.Dataset
    arrays: dict  # split -> (images or None where streamed, labels, names)
    train_ds: object  # batches of (pixels, target[, sample weight])
    val_ds: object  # batches of pixels, in the order of arrays["val"]
    steps: int  # training steps per epoch
    loss: object
    one_hot: bool
    positive_index: int | None
    normalization: tuple | None  # (mean, std) with data.normalize: dataset
    augment_in_model: bool = False  # data.augment_on resolved: the fitted model's front augments (train_batches don't)


def dataset_statistics(batches) -> tuple[list, list]:
    """Per-channel mean and std of un-augmented training batches at the training resolution (pixels / 255)."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for x, _ in batches:
        x = x.numpy().astype(np.float64) / 255.0
        axes = tuple(range(x.ndim - 1))  # every axis but the channels': slices and studies alike
        total += x.sum(axis=axes)
        total_sq += (x**2).sum(axis=axes)
        count += x.size // x.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _decode_splits(cfg, dataset, run_dir):
    """split -> (images, labels, names), each split decoded once; skipped files listed in `bad_files.csv`."""
    from medkeras.data.pipeline import split_arrays
    from medkeras.train.rundir import write_rows

    arrays, bad = {}, []
    for split in ("train", "val", "test"):
        held = dataset.splits[split]
        if split == "train" and held.store is not None:  # streamed, never held in memory
            arrays[split] = (None, held.labels, held.names())
            continue
        images, labels, names, skipped = split_arrays(held, cfg.data, cfg.data.on_bad_file)
        arrays[split] = (images, labels, names)
        bad += [(split, p, c) for p, c in skipped]
    if bad:
        write_rows(run_dir / "bad_files.csv", ["split", "path", "cause"], bad)
        what = "study" if dataset.splits["train"].studies else "file"
        print(f"medkeras: skipped {counted(len(bad), 'unreadable ' + what)} (listed in {run_dir / 'bad_files.csv'})")
    for split in ("train", "val"):
        if len(arrays[split][1]) == 0:
            raise MedkerasError(f"{cfg.data.source}: the {split} split is empty after reading")
    if len(dataset.splits["test"]) and len(arrays["test"][1]) == 0:
        print(f"medkeras: warning: every test file was skipped as unreadable ({run_dir / 'bad_files.csv'}): "
              "the run ends without a test report")
    return arrays


def read_data(cfg, run_dir, size_var=None) -> RunData:
    """Load `cfg.data`, decode its splits, and build the training and validation batches. Fills in the config's
    class names, positive class and (data.normalize: dataset) the training set's mean and std."""
    from medkeras.data.augment import augment_where
    from medkeras.data.pipeline import make_tf_dataset, stream_tf_dataset
    from medkeras.data.sources import check_trainable
    from medkeras.data.studies import load_items
    from medkeras.evaluation.thresholds import check_choosable
    from medkeras.models.outputs import positive_index
    from medkeras.train.losses import class_weights, make_loss

    from medkeras.config import is_study

    tc = cfg.train
    dataset = load_items(cfg.data, seed=tc.seed, studies=is_study(cfg))
    check_trainable(dataset, cfg.data.source)
    k = dataset.num_classes
    pos = positive_index(dataset.class_names, dataset.positive_class)
    loss, one_hot = make_loss(tc, k)  # the class-dependent keys checked before any file is decoded
    class_weights(tc, dataset.splits["train"].labels, dataset.class_names, pos)
    # before decoding (a split of studies takes minutes to read), and again after it (skipped files may leave one class)
    check_choosable(cfg.eval.threshold, dataset.splits["val"].labels, pos, dataset.class_names, cfg.data.source)
    arrays = _decode_splits(cfg, dataset, run_dir)
    check_choosable(cfg.eval.threshold, arrays["val"][1], pos, dataset.class_names, cfg.data.source)
    cfg.data.class_names = list(dataset.class_names)
    cfg.data.positive_class = dataset.positive_class
    in_model = augment_where(cfg.data.augment_on) == "model"

    def train_batches(training):
        split, (images, labels, _) = dataset.splits["train"], arrays["train"]
        # the multi-worker loop resizes inside its step instead (loop.py): workers prefetch differently, and a
        # batch of another size on one worker alone retraced its step apart from the others' (a hung all-reduce)
        sv = size_var if training and tc.strategy != "multiworker" else None
        if split.store is not None:
            return stream_tf_dataset(split, cfg.data, tc.batch_size, training, tc.seed, size_var=sv, front=in_model,
                                     deterministic=tc.deterministic, balanced=tc.sampling == "balanced")
        return make_tf_dataset(images, labels, cfg.data, tc.batch_size, training, tc.seed, size_var=sv, front=in_model,
                               deterministic=tc.deterministic, balanced=tc.sampling == "balanced")

    if cfg.data.normalize == "dataset" and cfg.data.mean is None:
        cfg.data.mean, cfg.data.std = dataset_statistics(train_batches(training=False))
    normalization = (cfg.data.mean, cfg.data.std) if cfg.data.normalize == "dataset" else None

    train_labels = arrays["train"][1]
    weights = class_weights(tc, train_labels, dataset.class_names, pos)
    train_ds = train_batches(training=True)
    if one_hot or weights is not None:
        import tensorflow as tf

        table = tf.constant(weights if weights is not None else np.ones(k, np.float32))

        def relabel(x, y):
            target = tf.one_hot(y, k) if one_hot else y
            return (x, target, tf.gather(table, y)) if weights is not None else (x, target)

        train_ds = train_ds.map(relabel)
    steps = int(np.ceil(len(train_labels) / tc.batch_size))
    if tc.steps_per_epoch:
        steps = tc.steps_per_epoch
        train_ds = train_ds.repeat()
    val_images, val_labels, _ = arrays["val"]
    val_ds = make_tf_dataset(val_images, val_labels, cfg.data, cfg.eval.batch_size).map(lambda x, y: x)
    return RunData(dataset, arrays, train_ds, val_ds, steps, loss, one_hot, pos, normalization, in_model)
