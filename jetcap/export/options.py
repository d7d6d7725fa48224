"""Options of one export, as one small object instead of a long parameter list."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from jetcap.errors import UsageError


class Exporter(str, enum.Enum):
    """Which torch.onnx exporter to use."""

    TORCHSCRIPT = "torchscript"  # legacy, deprecated but the only one emitting opset <= 17 in torch 2.14
    DYNAMO = "dynamo"  # torch.export based, opset >= 18 (TensorRT >= 10)


class CalibrationMethod(str, enum.Enum):
    """How INT8 activation ranges are chosen from the calibration data."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


# Opsets each exporter can produce in torch 2.14 (measured: dynamo turns 13 into 18, 17 is broken).
EXPORTER_OPSETS = {Exporter.TORCHSCRIPT: (9, 17), Exporter.DYNAMO: (18, 23)}
# Variants export can write, in the order it writes them (int8-cpu: ONNX Runtime on a CPU, not TensorRT).
EXPORT_PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")
# QuantizeLinear / DequantizeLinear take a per-channel ``axis`` from opset 13 on.
QDQ_PER_CHANNEL_OPSET = 13
# TensorRT 8.2 (JetPack 4.6) parses ONNX opsets up to 13.
JETPACK46_MAX_OPSET = 13


@dataclass
class ExportOptions:
    """Everything ``jetcap export`` needs.

    Attributes:
        checkpoint: the PyTorch checkpoint.
        out_dir: the bundle directory to create (replaced only with ``force``).
        family: model family name; None detects it from the checkpoint.
        opset: ONNX opset (default 13: what TensorRT 8.2 parses).
        exporter: torch.onnx exporter.
        precisions: variants to produce (``EXPORT_PRECISIONS``); fp32 is always produced.
        max_batch: largest batch of every graph's dynamic batch axis.
        image_size: captioner input size override (square); with ``dynamic_image_size`` the profile's opt.
        dynamic_image_size: captioner: export the encoder with symbolic ``height``/``width`` (and the
            feature-pixel axis ``num_pixels`` of both graphs) over ``image_size_range``.
        image_size_range: (min, max) square side for ``dynamic_image_size``; None entries default to
            (max(32, opt // 2), 2 * opt).
        seq_len: classifier (min, opt, max) T; None entries default to (1, max/2, positional-encoding length).
        calibration_data: folder of images/sequences for INT8 calibration and reference data; None: built-in samples.
        calibration_method, calibration_samples: INT8 calibration settings.
        int8_search: INT8: keep float the layers whose quantization does the most harm until the family's
            tolerance is met (:mod:`jetcap.export.int8_search`); runs only when the fully quantized graph misses it.
        int8_max_float_fraction: the most of a graph's INT8-candidate MACs the search may keep float (0..1).
        int8_error_budget: the search's target as a share of the family's INT8 tolerance (default 1.0).
        task_samples: the most held-out inputs of ``calibration_data`` the export's task checks (its
            verdict) use; the bundle stores the family's first 16 images / 12 sequences of them
            (:func:`jetcap.export.tasks.task_paths`).
        int8_task_samples: the most task inputs (of ``calibration_data``, none of the verdict's) the INT8
            search checks captions / labels on (:func:`jetcap.export.tasks.search_paths`).
        keep_passing: when a variant fails its check, still write the bundle with the variants that passed
            (the failed ones listed in the manifest's ``failed_variants``; export still exits 1).
        trust_pickle, code_path, word_map, labels, hints: checkpoint-loading options.
        models: ``{part: "MODULE:NAME"}`` of the user's model class/factory (``model`` for one module,
            ``encoder``/``decoder`` for parts); the checkpoint then only provides weights.
        model_args: constructor arguments for ``models`` (an object, or ``{part: object}``).
        adapter: a captioner adapter file (how one decoder step of the user's model is wired).
        output: classifier: which forward output holds the logits (name or position).
        input_size: classifier features per frame, when the model does not tell.
        mean, std: captioner input normalisation, when the checkpoint does not store it.
        caption_max_len: captioner decoding limit stored in the manifest.
        target: device or TensorRT version of the pre-flight (``jetcap check``) run at the end; None: nano.
        preflight: run that pre-flight (an error there exits 1, the bundle is kept).
        simplify: run onnxslim (re-validated after).
        seed: seed of the dummy inputs.
        force: replace an existing bundle.
    """

    checkpoint: Optional[Path]
    out_dir: Path
    family: Optional[str] = None
    opset: int = 13
    exporter: Exporter = Exporter.TORCHSCRIPT
    precisions: Tuple[str, ...] = ("fp32",)
    max_batch: int = 8
    image_size: Optional[int] = None
    dynamic_image_size: bool = False
    image_size_range: Tuple[Optional[int], Optional[int]] = (None, None)
    seq_len: Tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None)
    calibration_data: Optional[Path] = None
    calibration_method: CalibrationMethod = CalibrationMethod.MINMAX
    calibration_samples: int = 32
    int8_search: bool = True
    int8_max_float_fraction: float = 0.25
    int8_error_budget: float = 1.0
    int8_task_samples: int = 100
    task_samples: int = 200
    keep_passing: bool = False
    trust_pickle: bool = False
    code_path: Optional[Path] = None
    word_map: Optional[Path] = None
    labels: Optional[Path] = None
    hints: Dict[str, Any] = field(default_factory=dict)
    models: Dict[str, str] = field(default_factory=dict)
    model_args: Optional[Dict[str, Any]] = None
    adapter: Optional[Path] = None
    output: Optional[str] = None
    input_size: Optional[int] = None
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    caption_max_len: Optional[int] = None
    target: Optional[str] = None
    preflight: bool = True
    simplify: bool = True
    seed: int = 0
    force: bool = False

    def check(self) -> None:
        """UsageError for inconsistent options, before any work is done."""
        self.exporter = Exporter(self.exporter)
        self.calibration_method = CalibrationMethod(self.calibration_method)
        low, high = EXPORTER_OPSETS[self.exporter]
        if not low <= self.opset <= high:
            raise UsageError("the {} exporter produces opsets {}..{}, not {}".format(
                self.exporter.value, low, high, self.opset),
                hint="use --exporter dynamo for opset >= 18" if self.opset > high else "use --exporter torchscript")
        unknown = set(self.precisions) - set(EXPORT_PRECISIONS)
        if unknown:
            raise UsageError("unknown precision(s): " + ", ".join(sorted(unknown)))
        self.precisions = tuple(p for p in EXPORT_PRECISIONS if p in set(self.precisions) | {"fp32"})
        if "int8" in self.precisions and self.opset < QDQ_PER_CHANNEL_OPSET:
            raise UsageError("--precision int8 writes per-channel Q/DQ nodes (their axis attribute), which need opset "
                             ">= {}, not {}".format(QDQ_PER_CHANNEL_OPSET, self.opset),
                             hint="drop --opset (13, what TensorRT 8.2 parses) or use --precision int8-cpu")
        if self.max_batch < 1:
            raise UsageError("--max-batch must be >= 1")
        if self.exporter is Exporter.DYNAMO and self.max_batch < 2:
            raise UsageError("the dynamo exporter freezes a dynamic batch of 1; use --max-batch >= 2")
        if not self.dynamic_image_size and any(s is not None for s in self.image_size_range):
            raise UsageError("--min-image-size/--max-image-size need --dynamic-image-size")
        if not 0.0 <= self.int8_max_float_fraction <= 1.0:
            raise UsageError("--int8-max-float-fraction must be within 0..1")
        if not self.int8_error_budget > 0:
            raise UsageError("--int8-error-budget must be > 0")
        if self.task_samples < 1:
            raise UsageError("--task-samples must be >= 1")
        if self.int8_task_samples < 1:
            raise UsageError("--int8-task-samples must be >= 1")
        if self.calibration_samples < 1:
            raise UsageError("--calibration-samples must be >= 1")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise UsageError("checkpoint not found: {}".format(self.checkpoint))
        if self.adapter is not None and not Path(self.adapter).is_file():
            raise UsageError("adapter file not found: {}".format(self.adapter))
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and (len(values) != 3 or (name == "std" and any(v <= 0 for v in values))):
                raise UsageError("--{} needs three numbers{}".format(name, " > 0" if name == "std" else ""))
        if self.calibration_data is not None and not Path(self.calibration_data).is_dir():
            raise UsageError("calibration data folder not found: {}".format(self.calibration_data))
        out = Path(self.out_dir)
        if out.exists() and not self.force and (not out.is_dir() or any(out.iterdir())):
            raise UsageError("{} already exists".format(out), hint="pass --force to replace it")


def source_options(opts: "ExportOptions"):
    """The :class:`jetcap.models.sources.SourceOptions` of an export."""
    from jetcap.models.sources import SourceOptions

    return SourceOptions(checkpoint=opts.checkpoint, family=opts.family, models=dict(opts.models),
                         model_args=opts.model_args, trust_pickle=opts.trust_pickle, code_path=opts.code_path,
                         word_map=opts.word_map, labels=opts.labels, hints=dict(opts.hints))
