"""The eval section's checks: calibration, TTA flips, the threshold rule, result levels."""

from __future__ import annotations

from medkeras.config.values import one_of
from medkeras.errors import ConfigError
from medkeras.evaluation.thresholds import parse_rule


def check_eval(cfg) -> None:
    evaluation = cfg.eval
    one_of("eval.calibrate", evaluation.calibrate, ("temperature", "none"))
    for flip in evaluation.tta_flips:
        one_of("eval.tta_flips", flip, ("horizontal", "vertical", "both"))
    parse_rule(evaluation.threshold)
    for level in evaluation.aggregate:
        one_of("eval.aggregate", level, ("series", "patient"))
    one_of("eval.aggregate_rule", evaluation.aggregate_rule, ("mean", "max", "topk"))
    if evaluation.aggregate_topk < 1:
        raise ConfigError(f"config key 'eval.aggregate_topk' must be >= 1, got {evaluation.aggregate_topk}")
