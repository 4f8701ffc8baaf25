"""`medkeras fit`: a run in four named steps, each in its own module -- read the data (`inputs.py`), build the
model (`medkeras.models`), train it phase by phase (`phases.py`), finish the run (`finish.py`: calibrate on
validation, score val and test, write the report and `metrics.json`). The run directory is `rundir.py`'s.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import medkeras
from medkeras.config import Config, is_study, plane_size, resolve_paths, validate
from medkeras.errors import MedkerasError
from medkeras.models.tta import config_flips
from medkeras.progress import step
from medkeras.train.rundir import (
    Timer,
    default_run_dir,
    load_run_config,
    run_failed,
    run_finished,
)


def model_meta(cfg: Config, dataset) -> dict:
    """What a saved model carries so that eval, predict and export need nothing else."""
    if is_study(cfg):  # what a study is resampled to, and what it is fed as
        study = {"model_input": cfg.model.input, "volume_size": list(cfg.data.volume_size),
                 "spacing": list(cfg.data.spacing) if cfg.data.spacing else None, "slab": cfg.data.slab,
                 "input": "float32 pixels in [0, 255], (N, D, H, W, 3): a study resampled to volume_size"}
    else:
        study = {"model_input": "slice"}
    return {
        "medkeras_version": medkeras.__version__,
        "class_names": list(dataset.class_names),
        "positive_class": dataset.positive_class,
        "image_size": cfg.data.image_size,
        "channels": 3,
        "input": "float32 pixels in [0, 255], (N, H, W, 3)",
        "windows": cfg.data.window or [],
        "backbones": list(cfg.model.backbones),
        "threshold": 0.5,
        "threshold_rule": cfg.eval.threshold,
        "temperature": 1.0,
        "tta_flips": config_flips(cfg.eval),  # scored with these flips everywhere (models/tta.py)
        "config": cfg.to_dict(),
        **study,
    }


def make_strategy(name: str):
    """A tf.distribute strategy: `mirrored` over every GPU (or every logical CPU where there is none), `auto`
    mirrored only with several GPUs, `one_device` the first device. The global batch is `train.batch_size`."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def _set_precision(tc):
    import keras

    keras.mixed_precision.set_global_policy(tc.precision)
    if tc.op_determinism:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit(cfg: Config | None = None, out=None, resume: bool = False, overwrite: bool = False, epochs=None) -> Path:
    """Train what `cfg` describes; returns the run directory.

    A run is never lost: `out` holding a run is refused unless `overwrite` (the old run is kept aside until the new
    one finishes); `resume` continues the run in `out` from its last epoch (`cfg` is not needed: the run's own
    config is used), and with `epochs` above what it has, continues a finished run (its outputs kept in
    `before-epoch-N/`); a finished run asked for no more epochs is left as it is. A fit that fails before any
    epoch leaves no directory behind; after some, the run stays resumable with a `FAILED` file saying why.

    Under `train.strategy: multiworker` every worker runs this with the same arguments and its own TF_CONFIG;
    the chief writes `out`, the others train alongside with a scratch directory and return it.
    """
    from medkeras.train.loop import is_chief
    from medkeras.train.rundir import (
        epochs_done,
        is_finished,
        keep_finished_outputs,
        open_run_dir,
    )

    if resume and out is None:
        raise MedkerasError("resume needs the run directory (out=RUN)")
    if resume and not (Path(out) / "config.yaml").is_file():
        raise MedkerasError(f"{out}: nothing to resume (no config.yaml: the run stopped before it began; "
                            "start it again with --overwrite)")
    timer = Timer()
    if cfg is not None and not resume:
        resolve_paths(cfg)  # config.yaml names its data and weights so that the run works from any directory
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    if resume and (run_dir / "config.yaml").is_file():
        cfg = load_run_config(run_dir)
        if epochs is not None:
            if int(epochs) < epochs_done(run_dir):
                raise MedkerasError(f"{run_dir}: has {epochs_done(run_dir)} epochs already; train.epochs={epochs} "
                                    "would shorten it")
            cfg.train.epochs = int(epochs)
            validate(cfg)
        if is_finished(run_dir):
            if cfg.train.epochs <= epochs_done(run_dir):
                print(f"medkeras: {run_dir} is finished ({epochs_done(run_dir)} epochs): nothing to resume "
                      "(--set train.epochs=N continues it to N)")
                return run_dir
            print(f"medkeras: continuing {run_dir} from epoch {epochs_done(run_dir)} to {cfg.train.epochs}; its "
                  f"finished outputs are kept in {keep_finished_outputs(run_dir)}")
    multiworker = None
    if cfg.train.strategy == "multiworker":
        import tempfile

        from medkeras.train.loop import make_multiworker_strategy

        multiworker = make_multiworker_strategy()
        if not is_chief(multiworker):
            scratch = Path(tempfile.mkdtemp(prefix="medkeras-worker-"))
            if resume and (run_dir / "config.yaml").is_file():
                (scratch / "config.yaml").write_text((run_dir / "config.yaml").read_text())
            run_dir = scratch
    state = open_run_dir(run_dir, resume, overwrite)
    try:
        result = _in_scope(cfg, run_dir, resume, timer, multiworker)
    except BaseException as exc:
        run_failed(state, exc)
        raise
    run_finished(state)
    return result


def _in_scope(cfg, run_dir, resume, timer, multiworker) -> Path:
    import keras

    from medkeras.train.loop import is_chief
    from medkeras.train.tracking import mlflow_run

    _set_precision(cfg.train)
    size_var = None
    if cfg.train.size_schedule:  # created outside the strategy scope: the input pipeline reads it, not a replica
        import tensorflow as tf

        size_var = tf.Variable(plane_size(cfg), dtype=tf.int32, trainable=False, name="train_image_size")
    try:  # multiworker: only model building and training run in the strategy's scope (see train_models)
        scope = contextlib.nullcontext() if multiworker else make_strategy(cfg.train.strategy).scope()
        chief = multiworker is None or is_chief(multiworker)  # only the chief tracks a multi-worker run
        with mlflow_run(cfg, run_dir, enabled=chief) as tracker, scope:
            return _run(cfg, run_dir, resume, timer, size_var, multiworker, tracker)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _run(cfg, run_dir, resume, timer, size_var, multiworker, tracker) -> Path:
    import keras

    from medkeras.train.finish import finish_run
    from medkeras.train.inputs import read_data
    from medkeras.train.phases import Context

    keras.utils.set_random_seed(cfg.train.seed)
    with step(f"reading the data ({cfg.data.source})"):
        data = read_data(cfg, run_dir, size_var)  # step 1
    if not resume:
        cfg.save(run_dir / "config.yaml")
    ctx = Context(cfg, run_dir, model_meta(cfg, data.dataset), data, timer, resume, size_var, multiworker, tracker)
    model, best = train_models(ctx)  # steps 2 and 3
    timer.mark("fit_s")
    if model is None:
        return run_dir  # a multi-worker run's other workers: the chief evaluates and writes the run
    finish_run(ctx, model, best)  # step 4
    return run_dir


def _uses_schedule(tc, name: str | None) -> bool:
    """Whether the model (a member by backbone name, or the whole joint model) trains under the size schedule."""
    return bool(tc.size_schedule) and (name is None or not tc.size_schedule_members or name in tc.size_schedule_members)


def train_models(ctx):
    """Build what `model` describes and train it: the joint model (or ensemble), each member apart
    (`train.ensemble: separate`, then assembled), or the joint model across workers. -> (best model, record);
    (None, record) on a multi-worker run's non-chief workers."""
    from medkeras.models.ensemble import (
        build_ensemble,
        build_member,
        build_model,
        member_names,
        weights_for,
    )
    from medkeras.models.io import load_model
    from medkeras.train.loop import is_chief
    from medkeras.train.phases import train_model

    from medkeras.models.study import build_study_member, build_study_model

    cfg, tc = ctx.cfg, ctx.cfg.train
    k, size, normalization = ctx.data.dataset.num_classes, cfg.data.image_size, ctx.data.normalization
    names, studies = list(cfg.model.backbones), is_study(cfg)

    def whole(sized):
        if studies:
            return build_study_model(cfg.model, cfg.data, k, normalization, dynamic=sized)
        return build_model(cfg.model, k, size, normalization, sized)

    if tc.ensemble == "separate" and len(names) > 1:
        members, best = [], {}
        for name, tag in zip(names, member_names(names)):
            sized = _uses_schedule(tc, name)
            if studies:
                member = build_study_member(cfg.model, cfg.data, name, k, tag, normalization, dynamic=sized)
            else:
                member = build_member(name, k, size, weights_for(cfg.model.weights, name), cfg.model.head,
                                      cfg.model.dropout, tag, normalization, dynamic=sized)
            member, best[tag] = train_model(ctx, member, tag, sized=sized)
            members.append(member)
        return build_ensemble(members, size, cfg.model.ensemble_weights), best
    sized = _uses_schedule(tc, None)
    if ctx.multiworker is None:
        return train_model(ctx, whole(sized), sized=sized)
    with ctx.multiworker.scope():
        _, best = train_model(ctx, whole(sized), sized=sized)
    if not is_chief(ctx.multiworker):
        return None, best
    model, _ = load_model(ctx.run_dir / "checkpoints" / "best.keras")  # outside the scope: plain predict from here
    return model, best
