"""What an export checks itself against, and int8: the run's own images for calibration (stratified from its
training split) and for the accuracy check (its validation split), and onnxruntime's static quantisation
(QDQ, per-channel int8 weights, uint8 activations calibrated by min-max on those images).

    images = ExportData.open(checkpoint_payload, data=None, img_size=32)
    quantize_int8("best.fp32.onnx", "best.onnx", images.calibration(256))
    images.accuracy(classifier)            # fraction of the validation split the model gets right
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .classifier import Classifier
from .data.cache import DecodedSplit, decode_split
from .data.images import Crop
from .data.sources import open_data
from .data.splits import DataSource, SplitData, rarest_label, relabel, select_split
from .data.transforms import preprocess_batch, stats_tensor
from .errors import ExportError
from .log import logger
from .multilabel.predictions import right_rows

CALIBRATION_BATCH = 32  # images per calibration forward pass
# activation ranges from the calibration images: their min/max, a histogram's 99.999th percentile, or the range
# that keeps the histogram's entropy (onnxruntime's CalibrationMethod names)
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


@dataclass
class ExportData:
    """The training run's data, opened the way the run split it (its val fraction, seed and data root)."""

    source: DataSource
    classes: list[str]  # the model's, in its order
    img_size: int
    workers: int | None = None
    crop: Crop = Crop()  # the model's evaluation crop: calibration and the accuracy check see what it will see

    @classmethod
    def open(cls, saved_config: dict, data: str | None, classes: list[str], img_size: int,
             workers: int | None = None, crop: Crop = Crop()) -> ExportData:
        spec = data or saved_config.get("data")
        if not spec:
            raise ExportError("this export needs the run's images (int8 calibration, the accuracy check): the "
                              "checkpoint names no data set; pass --data DATA")
        source = open_data(str(spec), val_split=saved_config.get("val_split", 0.1), seed=saved_config.get("seed", 0),
                           data_root=saved_config.get("data_root"),
                           follow_links=bool(saved_config.get("follow_links", False)),
                           label_sep=saved_config.get("label_sep", "|"))
        return cls(source, classes, img_size, workers, crop)

    def _split(self, name: str) -> SplitData:
        """A split of the data with the model's class indices ('val' falls back to 'test', as in training)."""
        name, _ = select_split(self.source, name)
        return relabel(self.source.splits[name], self.source.classes, self.classes, f"the {name} split")

    def calibration(self, count: int) -> DecodedSplit:
        """``count`` training images spread evenly over the class-sorted split: every class is represented."""
        train = self._split("train")
        keys = train.labels if train.labels.ndim == 1 else rarest_label(train.labels)  # multi-label: rarest label
        train = train.subset(np.argsort(keys, kind="stable"))
        if len(train) > count:
            train = train.subset(np.linspace(0, len(train) - 1, count).round().astype(np.int64))
        return decode_split(train, self.img_size, crop=self.crop, workers=self.workers, progress=False)

    def accuracy(self, classifier: Classifier, batch_size: int = 256) -> tuple[float, int]:
        """(accuracy, images) of ``classifier`` on the validation split."""
        val = decode_split(self._split("val"), self.img_size, crop=self.crop, workers=self.workers, progress=False)
        if len(val) == 0:
            raise ExportError("the validation split has no readable images: the accuracy check cannot run")
        hits = sum(_right(classifier, val.images[i:i + batch_size], val.labels[i:i + batch_size])
                   for i in range(0, len(val), batch_size))
        return hits / len(val), len(val)


def _right(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Images predicted right: the class (argmax), or for multi-label the whole label set at the thresholds."""
    logits = classifier.logits(images)
    if labels.ndim == 2:
        return right_rows(logits, labels, classifier.meta.thresholds)
    return int((logits.argmax(1) == labels).sum())


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: normalised float32 batches under the input's name."""

    def __init__(self, images: torch.Tensor, mean: list[float], std: list[float], batch: int):
        self._batches = self._iterate(images, stats_tensor(mean, "cpu"), stats_tensor(std, "cpu"), batch)

    @staticmethod
    def _iterate(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch: int) -> Iterator[dict]:
        for start in range(0, len(images), batch):
            yield {"image": preprocess_batch(images[start:start + batch], mean, std).numpy()}

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_int8(fp32: Path, out: Path, calibration: DecodedSplit, mean: list[float], std: list[float],
                  method: str = "minmax") -> None:
    """Static QDQ int8 with per-channel weights, calibrated on ``calibration`` (uint8 images of the model's size)
    with ``method`` (a CALIBRATION_METHODS key)."""
    import onnx
    from onnxruntime.quantization import (  # the optional 'export' extra
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fixed = onnx.load(fp32, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0].dim_value
    if len(calibration) == 0:
        raise ExportError("no readable training images to calibrate the int8 model on")
    logger.info(f"int8: calibrating on {len(calibration)} training images ({method})")
    reader = _Calibration(calibration.images, mean, std, fixed or CALIBRATION_BATCH)  # a fixed-batch export: its size
    prepared = out.with_name(f"prepared-{out.name}")  # shapes inferred and the graph folded, as onnxruntime advises
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]))
