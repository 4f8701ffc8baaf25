"""The `medkeras` command: a thin click layer that parses arguments and calls the library.

Errors a user can cause print one line, `medkeras: error: <what>: <why>`, and exit 2 (usage, config) or 1
(data, run time); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from medkeras.errors import ConfigError, MedkerasError, one_line
from medkeras.progress import counted

_DEBUG = {"on": False}


def _tf():
    """Import TensorFlow quietly (only commands that need it pay for it)."""
    if not _DEBUG["on"]:
        from medkeras._quiet import quiet_tensorflow

        quiet_tensorflow()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and TensorFlow's own logging.")
@click.version_option(package_name="medkeras")
def cli(debug):
    """Train, evaluate and export medical-image classifiers (Keras 3 on TensorFlow)."""
    _DEBUG["on"] = debug


@cli.command()
@click.argument("config", required=False, default="demo")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory (default runs/<config>-<time>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch (with --set "
              "train.epochs=N, continue a finished run to N epochs).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out (kept aside until the new one finishes).")
def fit(config, out, overrides, resume, overwrite):
    """Train CONFIG (a YAML file or a bundled config name; default: demo).

    \b
    Examples:
      medkeras fit                                   # the bundled demo, on bundled BreastMNIST
      medkeras fit lung-ct-ensemble --set data.source=ct.csv --out runs/ct
      medkeras fit --out runs/ct --resume --set train.epochs=20   # continue a run to 20 epochs
    """
    from medkeras.config import load_config, parse_override

    if resume and not out:
        raise click.UsageError("--resume needs --out RUN_DIR (the run to continue)")
    epochs = None
    if resume:
        from medkeras.train.rundir import changed_on_resume
        pairs = [parse_override(o) for o in overrides]
        for key, had, asked in changed_on_resume(out, overrides)[:1]:
            raise click.UsageError(f"--resume continues the run's own config; only train.epochs can change, not "
                                   f"{key} (the run has {had!r}, --set asks {asked!r})")
        epochs = next((v for k, v in pairs if k == "train.epochs"), None)
        cfg = None
    else:
        cfg = load_config(config, overrides)  # config errors come before the slow TensorFlow import
    _tf()
    from medkeras.train.fit import fit as run_fit

    run_dir = run_fit(cfg, out=out, resume=resume, overwrite=overwrite, epochs=epochs)
    if not (run_dir / "metrics.json").is_file():  # a multi-worker run's non-chief worker
        click.echo(f"medkeras: this worker's part is done (scratch: {run_dir}); the chief writes the run directory")
        return
    _print_summary(run_dir)


def _print_summary(run_dir):
    from medkeras.evaluation.metrics import summary_lines

    for line in summary_lines(run_dir):
        click.echo(line)


@cli.command()
@click.argument("config", required=False, default="demo")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="K: folds of train+val.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Directory (default runs/<config>-cv-<time>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--bag", is_flag=True, help="Also assemble the fold models into one ensemble, scored on test (RUN/bag).")
@click.option("--resume", is_flag=True, help="Continue the cross-validation in --out at its first unfinished fold.")
@click.option("--overwrite", is_flag=True, help="Replace the cross-validation in --out.")
def cv(config, folds, out, overrides, bag, resume, overwrite):
    """Cross-validate CONFIG: K stratified folds of train+val, whole patients per fold, test untouched.

    Each fold is a run in RUN/fold-i; RUN/oof holds out-of-fold predictions and their report, RUN/folds.csv the
    fold table (mean, sd, 95% interval over folds), RUN/bag (with --bag) the fold models as one ensemble.

    \b
    Examples:
      medkeras cv demo --folds 5 --bag --out runs/demo-cv
      medkeras cv --out runs/demo-cv --resume          # continue at the first unfinished fold
    """
    from datetime import datetime

    from medkeras.config import load_config

    if resume and not out:
        raise click.UsageError("--resume needs --out RUN_DIR (the cross-validation to continue)")
    if resume and overrides:
        raise click.UsageError("--resume continues the cross-validation's own config; drop --set")
    cfg = None if resume else load_config(config, overrides)
    out = out or f"runs/{cfg.name}-cv-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    _tf()
    from medkeras.train.cv import cross_validate, summary_lines

    for line in summary_lines(cross_validate(cfg, out, folds=folds, bag=bag, resume=resume, overwrite=overwrite)):
        click.echo(line)
    click.echo(f"cross-validation: {out}")


@cli.command()
@click.argument("data")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Store directory to write.")
@click.option("--config", help="Config (YAML or bundled name) whose data section applies: split, classes, window.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--window", help="Store Hounsfield units for DICOM (any data.window value, e.g. lung).")
@click.option("--size", type=click.IntRange(min=8), help="Resize once to SIZE x SIZE (default: keep each image's size).")
@click.option("--on-bad-file", type=click.Choice(["fail", "skip"]), help="Default: the config's data.on_bad_file.")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Decoding threads.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
def prepare(data, out, config, overrides, window, size, on_bad_file, workers, overwrite):
    """Decode DATA (folder, CSV manifest, .npz or bundled name) once into a streamable store at --out.

    Train from it with `data.source: OUT`. DICOM is stored in HU when a window is set, so windows can change later;
    under a study config (model.input slab, series or volume) each study as its resampled HU volume.

    \b
    Examples:
      medkeras prepare ct_manifest.csv --out stores/ct --window lung
      medkeras prepare ct_manifest.csv --out stores/ct224 --window lung --size 224
      medkeras prepare studies.csv --config lung-ct-study --out stores/studies
    """
    import yaml

    from medkeras.config import is_study, load_config

    extra = [("data.source", data)] + ([("data.on_bad_file", on_bad_file)] if on_bad_file is not None else [])
    if window is not None:
        extra.append(("data.window", yaml.safe_load(window)))
    cfg = load_config(config, [*overrides, *extra])
    _tf()
    from medkeras.data.prepare import prepare as run_prepare

    summary = run_prepare(cfg.data, out, size, cfg.train.seed, workers, overwrite, studies=is_study(cfg))
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    kind, what = ("HU volumes", "study") if summary["studies"] else ("HU" if summary["hu"] else "pixels", "file")
    click.echo(f"medkeras: prepared {out} ({counts}; {kind}; {summary['bytes'] / 2**20:.1f} MiB)")
    if summary["skipped"]:
        click.echo(f"medkeras: skipped {counted(summary['skipped'], 'unreadable ' + what)} (listed in {Path(out) / 'bad_files.csv'})")


@cli.command("eval")
@click.argument("model", type=click.Path(exists=True))
@click.option("--data", help="Evaluate on another data source (same classes).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default <run>/eval-<split>).")
@click.option("--tta/--no-tta", default=None, help="Average logits over flips (default: as the model serves them).")
@click.option(
    "--threshold",
    help="Binary operating point: a number, or youden / f1 / sensitivity@0.95 / specificity@0.9 chosen on the "
    "validation split (default: the model's saved threshold).",
)
def eval_cmd(model, data, split, out, tta, threshold):
    """Evaluate MODEL (a run directory or a .keras file).

    \b
    Examples:
      medkeras eval runs/demo-20261123-101500
      medkeras eval runs/ct --split val --threshold youden --tta
      medkeras eval runs/ct/model.keras --data other_hospital.csv --out eval-other
    """
    _tf()
    from medkeras.evaluation.evaluate import evaluate

    result = evaluate(model, data=data, split=split, out=out, tta=tta, threshold=threshold)
    auroc = "undefined" if result.get("auroc") is None else f"{result['auroc']:.3f}"
    click.echo(f"{split}: AUROC {auroc}  accuracy {result.get('accuracy', float('nan')):.3f}  (n={result['n']})")
    click.echo(f"report: {result['out']}/report.html")


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--out", "base", required=True, type=click.Path(file_okay=False), help="TF Serving base directory.")
@click.option("--name", help="Model name (default: the config's export.name).")
@click.option("--version", "version", type=click.IntRange(min=1), help="Version number (default: the next one).")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "onnx"]), default="savedmodel", show_default=True)
def export(model, base, name, version, fmt):
    """Export MODEL (a run directory or .keras file) as a TF Serving SavedModel: BASE/NAME/VERSION/.

    Every signature is checked against the Keras model in a fresh process before the version appears.

    \b
    Examples:
      medkeras export runs/demo-20261123-101500 --out serving --name breast
      medkeras export runs/ct/model.keras --out serving --name ct --version 3
    """
    _tf()
    if fmt == "onnx":
        from medkeras.export.onnx import export_onnx

        result = export_onnx(model, base, name=name, version=version)
        what = "logits"
    else:
        from medkeras.export.savedmodel import export_savedmodel

        result = export_savedmodel(model, base, name=name, version=version)
        what = "probabilities"
    check = result["verification"]
    click.echo(f"verified on {check['images']} {check['source']}: max |served - keras| {what} = {check['max_abs_diff']:.2e}")
    for signature, diff in check.get("signatures", {}).items():
        click.echo(f"  {signature}: {check['checked'][signature]}: {diff:.2e}")
    click.echo(f"exported {result['path']} in {result['seconds']} s")


@cli.command("predict")
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="CSV file (default: standard output).")
@click.option("--on-bad-file", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--redact-paths", is_flag=True, help="Name rows by keyed patient and index, never by file name.")
def predict_cmd(model, inputs, out, on_bad_file, batch_size, redact_paths):
    """Score files or folders (DICOM, PNG, JPEG, NPY) with MODEL: a run dir, a .keras file or a SavedModel.

    One row per image (per DICOM frame; per series, multi-frame file or NIfTI for a study model), with DICOM's keys.

    \b
    Examples:
      medkeras predict runs/ct scans/ --out predictions.csv
      medkeras predict serving/ct slice.dcm slice2.png   # the exported SavedModel; a study model: Patient-1/ a.nii.gz
    """
    _tf()
    from medkeras.export.predict import predict

    result = predict(model, inputs, out=out, on_bad_file=on_bad_file, batch_size=batch_size, redact_paths=redact_paths)
    for path, cause in result["skipped"]:
        click.echo(f"medkeras: skipped {path}: {cause}", err=True)
    if result["skipped"]:
        click.echo(f"medkeras: skipped {counted(len(result['skipped']), 'unreadable ' + result['unit'])}", err=True)
    if out:
        click.echo(f"scored {counted(result['scored'], result['unit'])} -> {out}", err=True)


@cli.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the overlays.")
def gradcam(model, inputs, out):
    """Grad-CAM overlays of MODEL's predicted class for each input (one PNG per input).

    \b
    Examples:
      medkeras gradcam runs/ct scans/case1/ --out cams/
    """
    _tf()
    from medkeras.evaluation.gradcam import write_overlays
    from medkeras.models.io import open_model

    loaded = open_model(model, keras_only=True, purpose="Grad-CAM")
    written = write_overlays(loaded.model, loaded.meta, inputs, out)
    click.echo(f"wrote {len(written)} overlays to {out}")


@cli.command()
@click.option("--params", is_flag=True, help="Build each backbone to count its parameters (with a 1000-class "
              "head, as published; about two minutes for all of them on 2 CPU cores).")
def backbones(params):
    """List every backbone name with its default input size, preprocessing and (--params) parameter count.

    \b
    Examples:
      medkeras backbones
      medkeras fit demo --set "model.backbones=[resnet34, efficientnetb0]"   # names from this list
    """
    from medkeras.models.backbones import REGISTRY, published_params

    if params:
        _tf()
    click.echo(f"{'name':<20} {'size':>5}  {'preprocessing':<13} {'params':>8}  description" if params
               else f"{'name':<20} {'size':>5}  {'preprocessing':<13} description")
    for spec in REGISTRY.values():
        count = f"{published_params(spec.name) / 1e6:7.1f}M  " if params else ""
        click.echo(f"{spec.name:<20} {spec.default_size:>5}  {spec.preprocessing:<13} {count}{spec.description}")


@cli.command("convert-weights")
@click.argument("arch")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Keras weights file (.weights.h5).")
def convert_weights_cmd(arch, checkpoint, out):
    """Convert a PyTorch checkpoint (torchvision / timm) of ARCH to Keras weights for model.weights.

    \b
    ARCH: resnet18, resnet34 (torchvision or timm), vgg19_bn (torchvision), regnety_4gf / regnety_8gf (timm
    regnety_040 / _080), convnextv2_atto / _nano / _tiny / _base (timm). CHECKPOINT: .safetensors, or .pth / .pt /
    .bin (zip or legacy; read without PyTorch, tensors only). The ImageNet classifier is dropped.
    \b
    Examples:
      medkeras convert-weights resnet34 ~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth \\
          --out weights/resnet34.weights.h5
      medkeras convert-weights convnextv2_tiny model.safetensors --out weights/convnextv2_tiny.weights.h5
      medkeras fit cancer-resnet34-frozen --set model.weights=weights/resnet34.weights.h5
    """
    _tf()
    from medkeras.models.convert import convert_weights

    report = convert_weights(arch, checkpoint, out)
    dropped = f"; left out the classifier ({', '.join(report.dropped)})" if report.dropped else ""
    click.echo(f"wrote {out}: {report.tensors} tensors, {report.parameters / 1e6:.1f}M parameters of {arch} "
               f"in {report.seconds:.1f} s{dropped}")


@cli.command("config")
@click.argument("keys", nargs=-1)
@click.option("--markdown", is_flag=True, help="The table as Markdown (the README's table is this output).")
def config_cmd(keys, markdown):
    """Every config key (or those starting with KEYS) with its type, default and meaning.

    \b
    Examples:
      medkeras config                  # all of them
      medkeras config train.epochs data.window
      medkeras config data.augment     # a whole section
    """
    from medkeras.config.keys import describe_keys, keys_markdown

    if markdown:
        click.echo(keys_markdown(), nl=False)
        return
    rows = [r for r in describe_keys() if not keys or any(r[0] == k or r[0].startswith(k + ".") for k in keys)]
    if not rows:
        from medkeras.config.values import _unknown_key

        raise _unknown_key(keys[0])
    width = max(len(r[0]) for r in rows)
    for key, kind, default, meaning in rows:
        click.echo(f"{key:<{width}}  {kind:<13} {default:<14} {meaning}")


@cli.command()
def configs():
    """List the bundled configs with their one-line descriptions (`medkeras config` lists every key).

    \b
    Examples:
      medkeras configs
      medkeras fit lung-ct-ensemble --set data.source=ct.csv
    """
    import yaml

    from medkeras.config import bundled_configs

    for name, path in bundled_configs().items():
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        click.echo(f"{name:<24} {description}")


def main(argv=None):
    """Console-script entry point: run the CLI and turn known errors into one line and an exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG["on"] = "--debug" in args
    try:
        cli.main(args=args, prog_name="medkeras", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("medkeras: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if _DEBUG["on"]:
            traceback.print_exc()
        click.echo(f"medkeras: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except MedkerasError as exc:
        if _DEBUG["on"]:
            traceback.print_exc()
        click.echo(f"medkeras: error: {one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("medkeras: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _DEBUG["on"]:
            raise
        click.echo(f"medkeras: error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(0)


__all__ = ["ConfigError", "cli", "main"]
