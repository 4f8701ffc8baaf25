"""`medkeras cv`: stratified, patient-grouped K-fold cross-validation over train+val; test is never touched.

Each fold is an ordinary run in `RUN/fold-i/` (its config says `data.folds: K`, `data.fold: i`, so it resumes and
evaluates like any run). Then, from the folds' validation predictions (each image scored by the one model that did
not train on it):
- `RUN/oof/`: out-of-fold predictions for every train+val image, with metrics.json and report.html;
- `RUN/folds.csv` and `RUN/cv.json`: the fold table, with the mean, sd and a t interval over folds;
- with `bag`, `RUN/bag/`: the fold models as one functional ensemble averaging their logits, its temperature and
  thresholds fitted on the out-of-fold logits, scored on test, and a run directory `eval` and `export` take.
`RUN/cv.yaml` records the config and K; `cv.json` is written last, so a run without it is unfinished (`resume`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml

from medkeras.config import Config, from_dict, is_study, validate
from medkeras.errors import MedkerasError
from medkeras.progress import step
from medkeras.utils import atomic_write_json, atomic_write_text

SUMMARY = ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1", "f1_macro", "sensitivity", "specificity", "ece",
           "brier")


def _open(out: Path, cfg, folds, bag, resume, overwrite):
    """-> (cfg, folds, bag, RunState): a new cross-validation in `out` (`rundir.open_run_dir`, as a fit's run), or the
    one there to resume."""
    from medkeras.train.rundir import open_run_dir

    state = open_run_dir(out, resume, overwrite, marker="cv.yaml", kind="cross-validation",
                         finished=lambda d: (d / "cv.json").is_file())
    if resume:
        saved = yaml.safe_load((out / "cv.yaml").read_text())
        return from_dict(saved["config"]), int(saved["folds"]), bool(bag or saved.get("bag")), state
    atomic_write_text(out / "cv.yaml", yaml.safe_dump({"folds": folds, "bag": bool(bag), "config": cfg.to_dict()},
                                                      sort_keys=False))
    return cfg, folds, bag, state


def fold_config(cfg: Config, folds: int, fold: int) -> Config:
    """The run config of fold `fold` (1..folds): the same recipe, train+val re-split by `data.folds`/`data.fold`."""
    fold_cfg = from_dict(cfg.to_dict())
    fold_cfg.name = f"{cfg.name}-fold{fold}"
    fold_cfg.data.folds, fold_cfg.data.fold = int(folds), int(fold)
    validate(fold_cfg)
    return fold_cfg


def cross_validate(cfg: Config | None, out, folds: int = 5, bag: bool = False, resume: bool = False,
                   overwrite: bool = False) -> dict:
    """Run (or `resume`) K-fold cross-validation of `cfg` into `out` -> the contents of `RUN/cv.json`."""
    import keras

    from medkeras.train.fit import fit
    from medkeras.train.rundir import Timer, discard_new, is_finished, run_finished

    out = Path(out)
    if not resume and folds < 2:
        raise MedkerasError(f"--folds must be at least 2, got {folds}")
    timer = Timer()
    cfg, folds, bag, state = _open(out, cfg, folds, bag, resume, overwrite)
    if resume and (out / "cv.json").is_file():
        import json

        done = json.loads((out / "cv.json").read_text())
        if not bag or "bag" in done:
            print(f"medkeras: {out} is finished ({folds} folds): nothing to resume")
            return done
    try:
        for i in range(1, folds + 1):
            fold_dir = out / f"fold-{i}"
            if is_finished(fold_dir):
                print(f"medkeras: fold {i}/{folds} is finished ({fold_dir})")
                continue
            print(f"medkeras: fold {i}/{folds} ({fold_dir})")
            if (fold_dir / "config.yaml").is_file():
                fit(None, out=fold_dir, resume=True)
            else:
                fit(fold_config(cfg, folds, i), out=fold_dir, overwrite=fold_dir.exists())
            keras.backend.clear_session()  # each fold builds its graphs anew; the last fold's are not kept
            timer.mark(f"fold{i}_s")
        result = _finish(out, cfg, folds, bag, timer)
    except BaseException:
        if not any((out / f"fold-{i}").exists() for i in range(1, folds + 1)):
            discard_new(state)  # nothing trained: nothing left behind
        raise
    run_finished(state)
    return result


def _read_val_predictions(fold_dir: Path, class_names) -> tuple[list, np.ndarray]:
    path = fold_dir / "predictions-val.csv"
    if not path.is_file():
        raise MedkerasError(f"{fold_dir}: has no predictions-val.csv (a run from before cross-validation kept "
                            "validation logits): run it again with --overwrite")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["path"] for r in rows], np.asarray([[float(r[f"logit_{c}"]) for c in class_names] for r in rows],
                                                np.float32)


def fold_table(metrics: list[dict]) -> tuple[list[dict], dict]:
    """Rows per fold (validation and test figures) and {figure: mean, sd and the t interval of the mean}."""
    from scipy import stats

    rows = []
    for i, m in enumerate(metrics, 1):
        row = {"fold": i, "best_epoch": m.get("best_epoch")}
        for split in ("val", "test"):
            got = m.get(split) or {}
            row[f"{split}_n"] = got.get("n")
            for key in SUMMARY:
                value = got.get(key, (got.get("calibration") or {}).get("after", {}).get(key))
                if value is not None:
                    row[f"{split}_{key}"] = float(value)
        rows.append(row)
    summary = {}
    for key in [k for k in rows[0] if k.endswith(tuple(SUMMARY)) and k.startswith(("val_", "test_"))]:
        values = np.asarray([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
        if len(values) < 2:
            continue
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(values) - 1) * sd / np.sqrt(len(values)))
        summary[key] = {"mean": mean, "sd": sd, "lower": max(0.0, mean - half), "upper": min(1.0, mean + half),
                        "folds": len(values)}  # every figure here lies in [0, 1]
    return rows, summary


def _write_table(path: Path, rows, summary) -> None:
    from medkeras.train.rundir import write_rows

    header = list(dict.fromkeys(k for r in rows for k in r))
    lines = [[r.get(k, "") for k in header] for r in rows]
    for stat in ("mean", "sd", "lower", "upper"):
        lines.append([stat, "", *[summary[k][stat] if k in summary else "" for k in header[2:]]])
    write_rows(path, header, [[f"{v:.4f}" if isinstance(v, float) else v for v in line] for line in lines])


def _finish(out: Path, cfg: Config, folds: int, bag: bool, timer) -> dict:
    """Out-of-fold predictions and report, the fold table, and (bag) the bagged ensemble; `cv.json` last."""
    import json

    from medkeras.data.studies import load_items
    from medkeras.data.splits import pool_of
    from medkeras.evaluation.evaluate import calibrate_on_validation, score_arrays, write_outputs
    from medkeras.models.io import load_model
    from medkeras.train.rundir import write_rows

    base = from_dict(cfg.to_dict())
    base.data.folds, base.data.fold = 0, 0
    validate(base)
    dataset = load_items(base.data, seed=base.train.seed, studies=is_study(base))
    pool = pool_of(dataset, base.data.source)
    metrics = [json.loads((out / f"fold-{i}" / "metrics.json").read_text()) for i in range(1, folds + 1)]
    _, meta = load_model(out / "fold-1")
    dataset.positive_class = meta.get("positive_class", dataset.positive_class)
    class_names = dataset.class_names

    with step("scoring the out-of-fold predictions"):
        index = {name: i for i, name in enumerate(pool.names())}
        names, logits, fold_of = [], [], []
        for i in range(1, folds + 1):
            fold_names, fold_logits = _read_val_predictions(out / f"fold-{i}", class_names)
            names += fold_names
            logits.append(fold_logits)
            fold_of += [i] * len(fold_names)
        missing = [n for n in names if n not in index]
        if missing or len(set(names)) != len(names):
            raise MedkerasError(f"{out}: the folds' validation predictions do not match train+val of "
                                f"{base.data.source} (data changed since the folds ran?)")
        logits = np.concatenate(logits)
        labels = np.asarray(pool.labels)[[index[n] for n in names]]
        # the bag's calibration: temperature and thresholds fitted on logits of images no model trained on
        calibration = calibrate_on_validation(labels, logits, class_names, dataset.positive_class, base.eval,
                                              split=pool, names=names)
        oof = score_arrays("out-of-fold", dataset, (None, labels, names), logits, calibration["temperature"],
                           calibration["threshold"], calibration["thresholds"], base.eval, split=pool)
        oof_meta = {**meta, **calibration, "backbones": [f"{folds} folds of {', '.join(meta.get('backbones', []))}"]}
        write_outputs(out / "oof", oof, dataset, base, oof_meta)
        write_rows(out / "oof" / "folds-of-images.csv", ["path", "fold"], list(zip(names, fold_of)))
        atomic_write_json(out / "oof" / "metrics.json", {"split": "out-of-fold (train+val)", **oof["metrics"],
                                                          **{k: calibration[k] for k in ("temperature", "threshold")}})
    rows, summary = fold_table(metrics)
    _write_table(out / "folds.csv", rows, summary)
    result = {"config": cfg.name, "folds": folds, "fold_table": rows, "summary": summary,
              "oof": oof["metrics"], "calibration": calibration}
    if bag:
        result["bag"] = bag_folds(out, base, dataset, folds, meta, calibration)
    timer.mark("total_s")
    result["timing_s"] = timer.marks
    atomic_write_json(out / "cv.json", result)
    return result


def bag_folds(out: Path, cfg: Config, dataset, folds: int, meta: dict, calibration: dict) -> dict:
    """The fold models as one functional ensemble (averaged logits) in `RUN/bag/`, calibrated on the out-of-fold
    logits, scored on test (with each fold alone and leave-one-out in the ensemble table) -> its test metrics."""
    import keras

    from medkeras.evaluation.evaluate import score_split, write_outputs
    from medkeras.models.ensemble import build_ensemble
    from medkeras.models.io import load_model, save_model

    bag_dir = out / "bag"
    bag_dir.mkdir(exist_ok=True)
    with step(f"assembling the {folds} fold models into one ensemble"):
        members = []
        for i in range(1, folds + 1):
            model, _ = load_model(out / f"fold-{i}")
            members.append(keras.Model(model.inputs[0], model.outputs[0], name=f"fold{i}"))  # unique names in one graph
        ensemble = build_ensemble(members, cfg.data.image_size, name="bagged_folds")
        bag_note = (f"the bag's temperature ({calibration['temperature']:.3f}) and thresholds were fitted on each "
                    f"image's out-of-fold logits, from one fold model; the bag averages {folds} models' logits, which "
                    "spread less, so they may be miscalibrated for it (no data is left to fit them on the bag itself)")
        bag_meta = {**meta, **calibration, "backbones": [f"fold{i}" for i in range(1, folds + 1)],
                    "bagged_from": [f"fold-{i}" for i in range(1, folds + 1)], "config": cfg.to_dict(),
                    "bag_note": bag_note}
        save_model(ensemble, bag_dir / "model.keras", bag_meta)
        cfg.save(bag_dir / "config.yaml")
    results = {}
    if len(dataset.splits["test"]):
        with step("evaluating the bagged ensemble on the test split"):
            scored = score_split(ensemble, bag_meta, "test", dataset, cfg, on_bad_file=cfg.data.on_bad_file)
            write_outputs(bag_dir, scored, dataset, cfg, bag_meta, model=ensemble)
        results = {"test": scored["metrics"], "ensemble": scored["ensemble"]}
    atomic_write_json(bag_dir / "metrics.json", {"config": cfg.name, "temperature": bag_meta["temperature"],
                                                 "threshold": bag_meta["threshold"], "note": bag_note,
                                                 "thresholds": bag_meta.get("thresholds", {}), **results})
    return results


def summary_lines(result: dict) -> list[str]:
    """What `medkeras cv` prints: AUROC over folds (mean, sd, interval), out of fold, and of the bag on test."""
    lines = []
    for key in ("val_auroc", "test_auroc"):
        s = result["summary"].get(key)
        if s:
            lines.append(f"{key.replace('_', ' ')} over {s['folds']} folds: {s['mean']:.3f} (sd {s['sd']:.3f}, "
                         f"95% CI [{s['lower']:.3f}, {s['upper']:.3f}])")
    if result["oof"].get("auroc") is not None:
        lines.append(f"out-of-fold AUROC {result['oof']['auroc']:.3f} (n={result['oof']['n']})")
    test = (result.get("bag") or {}).get("test")
    if test and test.get("auroc") is not None:
        lines.append(f"bagged ensemble test AUROC {test['auroc']:.3f} (n={test['n']})")
    return lines
