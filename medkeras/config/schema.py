"""The typed config of a run: one dataclass per section, every key with its default and meaning.

`Config()` is a valid config; YAML files and `--set` only change what they name (`load.py`), and `checks.py`
validates the result. The fully resolved config is what a run saves as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from medkeras.utils import atomic_write_text


@dataclass
class AugmentConfig:
    """Training-split augmentation, applied with Keras' own preprocessing layers (factors as Keras takes them)."""

    flip: str = "horizontal"  # "horizontal", "vertical", "horizontal_and_vertical" or "none"
    rotation: float = 0.05  # fraction of a full turn (0.05 = +-18 degrees)
    zoom: float = 0.0  # fraction of the side
    translation: float = 0.0  # fraction of the side
    fill_mode: str = "reflect"  # what rotation/zoom/translation fill with: reflect, constant (black: CT air), nearest, wrap
    brightness: float = 0.1  # fraction of the value range
    contrast: float = 0.1  # RandomContrast factor (0: off)
    noise: float = 0.0  # Gaussian noise standard deviation, in pixel units (0-255)
    blur: float = 0.0  # probability-like factor of RandomGaussianBlur (0: off)
    blur_sigma: float = 1.0  # RandomGaussianBlur's largest sigma, in pixels (0-1: its kernel is 3 x 3)
    clahe: float = 0.0  # probability of applying CLAHE (Keras' ContrastLimitedAdaptiveHistogramEqualization)
    clahe_clip_limit: float = 2.0  # CLAHE's contrast clip limit
    randaugment: int = 0  # RandAugment operations per image (0: off)
    randaugment_factor: float = 0.3  # RandAugment's magnitude, 0-1
    erasing: float = 0.0  # RandomErasing factor (a GridMask-like occlusion from Keras core; 0: off)


@dataclass
class DataConfig:
    """Where the images come from and how they become model inputs."""

    source: str = "breastmnist"  # bundled name, .npz, class-folder or CSV manifest
    image_size: int = 224  # square training size: images are resized bilinearly, antialiased
    # CT only: a preset name, [level, width], or a list of them (one per channel). Validation resolves it once to
    # [[level, width], ...] (or null): the form every module, the saved model and the SavedModel assets carry.
    window: Any = None
    split: list = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test when no split is given
    folds: int = 0  # cross-validation (set by `medkeras cv`): train+val cut into this many patient-grouped folds
    fold: int = 0  # with folds: the fold (1..folds) held out as val; train is the rest, test untouched
    class_names: Optional[list] = None  # default: from the dataset
    positive_class: Optional[str] = None  # binary tasks: the class whose probability is scored
    on_bad_file: str = "fail"  # "fail" or "skip"
    # The secret that keys patient IDs (an HMAC; see medkeras/data/keys.py): a file shared by a team, or null for
    # this user's own (~/.config/medkeras/patient.key, created once). The secret itself is never stored in a run.
    patient_key_file: Optional[str] = None
    redact_paths: bool = False  # outputs name items by their keyed patient and an index, never by file name
    cache: str = "auto"  # "auto" (in memory when it fits), "memory" or "none"
    normalize: str = "backbone"  # "backbone" (its ImageNet statistics) or "dataset" (train mean/std, see below)
    mean: Optional[list] = None  # filled in by fit with normalize: dataset (per channel, pixels / 255)
    std: Optional[list] = None  # filled in by fit with normalize: dataset (per channel, pixels / 255)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # where training augmentation runs: "data" (tf.data on the CPU), "model" (a block at the front of the training
    # model, so an accelerator does it; never in the saved, evaluated or exported model) or "auto" (model where
    # TensorFlow sees a GPU, else data)
    augment_on: str = "auto"
    # Studies (model.input slab, series or volume): each item a CT study (a DICOM series folder, a multi-frame file
    # or a NIfTI file), resampled trilinearly to data.volume_size, at data.spacing where given
    spacing: Optional[list] = None  # studies: [z, y, x] mm to resample to (then centre-cropped or padded with air)
    volume_size: Optional[list] = None  # studies: [D, H, W] every study is resampled to (required: one shape a batch)
    slab: int = 3  # model.input slab: the adjacent slices (odd) stacked as the channels of one 2D image


@dataclass
class ModelConfig:
    """What to build: one backbone or an ensemble of several, each with a replaced class head."""

    # what a sample is: "slice" (one image), or a whole CT study: "slab" (2.5D: every K adjacent slices through a 2D
    # backbone, the study's logits their mean), "series" (a 2D backbone over every slice, gated attention pooling
    # them) or "volume" (3D backbones). Under slab or series a 3D backbone name (resnet18_3d, ...) is a volume member
    input: str = "slice"
    # names from `medkeras backbones`; several make an ensemble averaging their logits
    backbones: list = field(default_factory=lambda: ["resnet50"])
    # "imagenet", "none", a .weights.h5 path, or {backbone: one of those, default: ...}; a recipe's dict follows
    # `--set model.backbones` (the backbones kept keep their weights, a new one starts from `default`, else none)
    weights: Any = "none"
    head: str = "linear"  # "linear" (Dense K) or "mlp" (Dropout .5, Dense 128 ReLU, Dropout .3, Dense K)
    dropout: float = 0.0  # before the linear head
    ensemble_weights: Optional[list] = None  # fixed weights for averaging the members' logits
    fusion: str = "mean"  # "mean" (or ensemble_weights), or "fitted": weights of minimum validation log-loss


@dataclass
class TrainConfig:
    """How to fit."""

    epochs: int = 10  # epochs in all (both phases of two-phase training)
    batch_size: int = 32  # the global batch (split across replicas and workers)
    seed: int = 42  # seeds splits, shuffling, augmentation and initialisation
    optimizer: str = "adamw"  # "adam", "adamw" or "sgd"
    learning_rate: float = 1e-3  # the (phase 1) learning rate
    weight_decay: float = 1e-4  # AdamW / SGD weight decay
    schedule: str = "cosine"  # "cosine" (with warmup), "step", "plateau" (reduce on plateau) or "constant"
    warmup_epochs: float = 0.0  # linear warm-up of the cosine schedule, in epochs
    step_epochs: int = 10  # "step": multiply the rate by step_gamma every step_epochs
    step_gamma: float = 0.1  # "step": the factor
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    loss: str = "cross_entropy"  # "cross_entropy", "focal" (Keras' CategoricalFocalCrossentropy) or "bce"
    focal_gamma: float = 2.0  # focal loss' gamma
    pos_weight: Optional[float] = None  # binary: weight of positive-class images (BCE pos_weight)
    class_weight: Any = None  # None, "balanced", or {class name: weight}; applied as sample weights
    # "shuffle" (every image once an epoch) or "balanced": each image drawn from a class chosen uniformly, the loss left
    # unweighted (an epoch draws as many images as the split has)
    sampling: str = "shuffle"
    freeze_backbone: bool = False  # train the head only, every epoch (backbones frozen, BatchNorm in inference)
    freeze_epochs: int = 0  # two-phase transfer learning: phase 1 (frozen) epochs; phase 2 fine-tunes the rest
    finetune_learning_rate: Optional[float] = None  # phase 2 rate (default learning_rate / 10)
    # BatchNorm while a backbone trains: "frozen" (inference mode, moving statistics fixed), "trainable", or "auto":
    # frozen in each backbone that starts from pretrained weights (its model.weights not none), else trainable
    finetune_batchnorm: str = "auto"
    early_stopping_patience: int = 0  # 0: off
    gradient_accumulation_steps: int = 1  # optimizer steps every N batches (Keras' own accumulation)
    # Exponential moving average of the weights (e.g. 0.99; 0: off): validated, checkpointed and saved with the
    # averaged weights (Keras' optimizer EMA + SwapEMAWeights at every epoch's end). Helps small datasets.
    ema: float = 0.0
    precision: str = "float32"  # "float32", "mixed_float16" or "mixed_bfloat16" (measure first on CPU)
    # Same config and seed, same run on this machine (train_log.csv, predictions): augmentation draws in batch order
    # and prepared stores streamed in a fixed order (parallel augmentation drew in whatever order batches ran)
    deterministic: bool = True
    op_determinism: bool = False  # TensorFlow op determinism too: what GPUs need; not needed on CPU
    ensemble: str = "joint"  # "joint" (one fit of the whole graph) or "separate" (each member, then assembled)
    strategy: str = "auto"  # tf.distribute: "auto" (mirrored over >1 GPU), "one_device", "mirrored", "multiworker"
    # Progressive resizing (EfficientNetV2): [[first epoch, size], ...], e.g. [[1, 128], [4, 256], [7, 384]];
    # validation, evaluation and export stay at data.image_size. Studies: the plane of data.volume_size, every
    # slice kept. Members: only these (default: all).
    size_schedule: Optional[list] = None
    size_schedule_members: Optional[list] = None  # with train.ensemble: separate, the members trained under it
    steps_per_epoch: Optional[int] = None  # default: the whole training split
    # the best checkpoint, early stopping and the plateau schedule follow this logged metric: val_auroc,
    # val_accuracy, val_loss (minimised), accuracy or loss (minimised; the training split's)
    monitor: str = "val_auroc"
    jit_compile: Any = False  # XLA: true, false or "auto" (measure first: it slows EfficientNet on CPU)
    run_eagerly: bool = False  # Keras' run_eagerly (debugging; tiny test fits build faster)
    # Train steps per compiled call (Keras' compile(steps_per_execution)): fewer Python round trips for small
    # models; batch-level callbacks then run every N steps. Lowered to a divisor of the epoch's steps (Keras runs
    # whole executions). Ignored by the multi-worker loop.
    steps_per_execution: int = 1
    verbose: int = 1  # Keras' progress bar: 0 silent, 1 bar, 2 one line per epoch


@dataclass
class EvalConfig:
    """How to evaluate."""

    split: str = "test"  # the split `medkeras eval` scores by default
    batch_size: int = 64  # evaluation batch size
    # binary operating point: a number, youden, f1, sensitivity@0.95, specificity@0.9 (a rule's threshold sits halfway
    # between the validation score it picks and the next lower one: validation is labelled as at the score itself)
    threshold: str = "0.5"
    calibrate: str = "temperature"  # "temperature" (fitted on validation logits) or "none"
    bootstrap: int = 1000  # resamples for the 95% intervals (0: none)
    ci_level: float = 0.95  # the intervals' level
    ece_bins: int = 15  # bins of the reliability diagram and ECE
    tta: bool = False  # average logits over the flips below
    tta_flips: list = field(default_factory=lambda: ["horizontal"])  # "horizontal", "vertical", "both"
    # Results per series and per patient too, where the data knows them (manifest patient_id / series_id columns,
    # DICOM tags, frames of one file): a group's logits combine its slices' by aggregate_rule.
    aggregate: list = field(default_factory=lambda: ["series", "patient"])
    aggregate_rule: str = "mean"  # "mean" of the slice logits, "max" (the surest slice) or "topk" (mean of the k surest)
    aggregate_topk: int = 3  # k of aggregate_rule: topk
    gradcam_examples: int = 4  # true positives and worst false negatives shown in the report


@dataclass
class TrackConfig:
    """Experiment tracking beyond the run directory and TensorBoard (which are always on)."""

    mlflow: bool = False  # log params, per-epoch metrics, test metrics and the report to MLflow (pip install mlflow)
    experiment: Optional[str] = None  # MLflow experiment (default: the config's name)
    tracking_uri: Optional[str] = None  # default: MLflow's own (MLFLOW_TRACKING_URI, or its local store)


@dataclass
class ExportConfig:
    """How to export for TF Serving."""

    name: str = "medkeras"  # the TF Serving model name (BASE/NAME/VERSION)


@dataclass
class Config:
    """The whole run. `Config()` is a valid config; YAML files and `--set` only change what they name."""

    name: str = "run"  # the run's name (its default directory: runs/NAME-TIME); a YAML file's name by default
    description: str = ""  # one line shown by `medkeras configs` and in the report
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path) -> None:
        atomic_write_text(path, self.to_yaml())
