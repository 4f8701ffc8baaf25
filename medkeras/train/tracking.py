"""MLflow tracking, when `track.mlflow: true` (an extra: `pip install mlflow` or `mlflow-skinny`).

The run directory and TensorBoard are always written; MLflow adds a searchable record across runs: the resolved
config as parameters, every epoch's logs as metrics, the test metrics, and the run's small files as artifacts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from medkeras.errors import ConfigError

ARTIFACTS = ("config.yaml", "metrics.json", "train_log.csv", "report.html", "predictions.csv")


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]  # MLflow caps parameter values
    return flat


def _mlflow():
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError("track.mlflow is on but MLflow is not installed (pip install 'medkeras[mlflow]')") from exc
    return mlflow


@contextlib.contextmanager
def mlflow_run(cfg, run_dir: Path, enabled: bool = True):
    """An MLflow run for the whole `fit` (or nothing when tracking is off or not `enabled`); yields mlflow or None."""
    if not (cfg.track.mlflow and enabled):
        yield None
        return
    mlflow = _mlflow()
    if cfg.track.tracking_uri:  # else MLflow's own default (MLFLOW_TRACKING_URI, or its local store)
        mlflow.set_tracking_uri(cfg.track.tracking_uri)
    mlflow.set_experiment(cfg.track.experiment or cfg.name)
    with mlflow.start_run(run_name=Path(run_dir).name):
        mlflow.log_params(_flatten({k: v for k, v in cfg.to_dict().items() if k != "description"}))
        yield mlflow
        for name in ARTIFACTS:
            if (Path(run_dir) / name).is_file():
                mlflow.log_artifact(str(Path(run_dir) / name))


def epoch_logger(mlflow, tag: str | None = None):
    """A Keras callback logging each epoch's logs (numbers only) to the active MLflow run."""
    import keras

    prefix = f"{tag}." if tag else ""

    class MLflowEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            numbers = {f"{prefix}{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            mlflow.log_metrics(numbers, step=epoch + 1)

    return MLflowEpochs()


def log_results(mlflow, results: dict) -> None:
    """Test/val metrics (point values) at the end of the run."""
    if mlflow is None:
        return
    flat = {}
    for split in ("val", "test"):
        for key, value in (results.get(split) or {}).items():
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            if isinstance(value, (int, float)) and value == value:
                flat[f"{split}.{key}"] = float(value)  # the saved model's; epochs log val_auroc etc.
    mlflow.log_metrics(flat)
