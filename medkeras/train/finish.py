"""Step 4 of a fit, finishing the run: fusion weights and temperature fitted on validation, the best model saved
with its operating point, validation and test scored and reported, `metrics.json` written.

Scores come from the arrays read at the start of the run (`inputs.py`): a split that trained and validated is
never read again, so it can never be found empty at the end.
"""

from __future__ import annotations

from medkeras.progress import step
from medkeras.utils import atomic_write_json


def _write_duplicates(run_dir, dataset) -> None:
    """`duplicates.csv`: identical images, and slices at one position of one scan, found in two splits (leaks
    that inflate test metrics)."""
    from medkeras.data.splits import (
        duplicates_across_splits,
        near_duplicates_across_splits,
    )
    from medkeras.train.rundir import write_rows

    rows = [("identical", *pair) for pair in duplicates_across_splits(dataset)["pairs"]]
    rows += [("same position", *pair) for pair in near_duplicates_across_splits(dataset)["pairs"]]
    if rows:
        write_rows(run_dir / "duplicates.csv", ["kind", "split_a", "item_a", "split_b", "item_b"], rows)
        print(f"medkeras: warning: {len(rows)} identical or same-position images across splits "
              f"({run_dir / 'duplicates.csv'})")


def finish_run(ctx, model, best: dict) -> dict:
    """Calibrate, save `model.keras`, score val and test, write the report and `metrics.json` -> the metrics."""
    from medkeras.evaluation.evaluate import (
        calibrate_on_validation,
        member_logits,
        predict_logits,
        score_split,
        write_outputs,
        write_predictions,
    )
    from medkeras.models.ensemble import build_ensemble, fit_fusion_weights, members_of
    from medkeras.models.io import in_float32, save_model
    from medkeras.train.tracking import log_results

    cfg, data, meta, run_dir = ctx.cfg, ctx.data, ctx.meta, ctx.run_dir
    dataset, (val_images, val_labels, val_names) = data.dataset, data.arrays["val"]
    model = in_float32(model)  # under a mixed policy too, what is calibrated and scored here is what exports serve
    meta["trained_precision"] = cfg.train.precision
    if cfg.model.fusion == "fitted" and len(members_of(model)) > 1:
        logits = member_logits(model, val_images, cfg.data, cfg.eval.batch_size, meta["tta_flips"])  # as scored
        fusion = fit_fusion_weights(list(logits.values()), val_labels)
        model = build_ensemble(members_of(model), cfg.data.image_size, fusion)
        meta["fusion_weights"] = dict(zip(logits, fusion))
    # Temperature and operating point are fitted on validation only, then saved with the model.
    with step("calibrating on the validation split and saving the model"):
        val_logits = predict_logits(model, val_images, cfg.data, cfg.eval.batch_size, meta["tta_flips"])
        meta.update(calibrate_on_validation(val_labels, val_logits, dataset.class_names, dataset.positive_class,
                                            cfg.eval, split=dataset.splits["val"], names=val_names))
        save_model(model, run_dir / "model.keras", meta)

    results = {}
    for split in ("val", "test"):
        if len(data.arrays[split][1]) == 0:
            continue
        held = data.arrays[split]  # decoded once, at the start of the run
        with step(f"evaluating the {split} split"):
            scored = score_split(model, meta, split, dataset, cfg, analysis=split == "test", arrays=held)
        if split == "val":  # with logits: cross-validation's out-of-fold predictions are these
            write_predictions(run_dir / "predictions-val.csv", scored["names"], scored["labels"], scored["probs"],
                              scored["pred"], dataset.class_names, logits=scored["logits"])
        if split == "test":
            with step("writing the report"):
                write_outputs(run_dir, scored, dataset, cfg, meta, model=model, history_csv=run_dir / "train_log.csv")
            results["ensemble"] = scored["ensemble"]
        results[split] = scored["metrics"]
    _write_duplicates(run_dir, dataset)
    ctx.timer.mark("total_s")
    record = best if "epoch" in best else {}
    atomic_write_json(
        run_dir / "metrics.json",
        {
            "config": cfg.name,
            "best_epoch": record.get("epoch"),
            "monitor": cfg.train.monitor,
            "monitor_value": record.get("value"),
            "members_best": None if record else best,
            "temperature": meta["temperature"],
            "threshold": meta["threshold"],
            "threshold_rule": meta["threshold_rule"],
            "thresholds": meta.get("thresholds", {}),
            "calibration_note": meta.get("calibration_note"),  # where the temperature worsens validation's ECE
            "fusion_weights": meta.get("fusion_weights"),
            "tta_flips": meta["tta_flips"],  # val and test below are scored with them, as served
            **results,
            "timing_s": ctx.timer.marks,
        },
    )
    log_results(ctx.tracker, results)
    return results
