"""An ONNX model (float32 or INT8) tested and used like a checkpoint: an mmseg segmentor.

:class:`OnnxEncoderDecoder` is mmseg's ``EncoderDecoder`` with one change: the logits of a
normalized image come from an ONNX Runtime session instead of backbone + decode head. All
else is the config's own: its ``data_preprocessor`` (normalization, padding), its
``test_cfg`` (whole image or sliding window: mmseg's ``slide_inference`` and
``whole_inference`` run unchanged) and mmseg's post-processing (crop, resize back to the
original image, argmax). So ``tools/test.py`` and ``tools/infer.py`` run an ONNX file
through exactly the pipeline that a checkpoint of the same config goes through.

The ONNX graph is the one :func:`repvgg_seg.deploy.export_onnx` writes: input ``N,3,H,W``
(normalized image), output ``N,C,H,W`` logits at the input's size.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from mmengine.config import Config, ConfigDict
from mmseg.models.segmentors import BaseSegmentor, EncoderDecoder
from mmseg.registry import MODELS

from .onnx_session import OnnxModelError, open_session

ONNX_SUFFIX = ".onnx"
# open_session and OnnxModelError are onnx_session's, re-exported for quantize's modules.
__all__ = [
    "ONNX_SUFFIX",
    "OnnxEncoderDecoder",
    "OnnxModelError",
    "build_onnx_segmentor",
    "is_onnx_file",
    "onnx_model_config",
    "open_session",
]


def is_onnx_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix, as the tools recognise it)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


@MODELS.register_module()
class OnnxEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` whose logits come from an ONNX model run by ONNX Runtime (CPU).

    Build it with :func:`onnx_model_config`, which takes everything but the file from the
    config the model was exported from.

    Args:
        onnx_file: The ONNX model (input ``N,3,H,W`` normalized image, output ``N,C,H,W``
            logits at the input's size).
        decode_head: The config's decode head: its ``num_classes``, ``out_channels``,
            ``threshold`` and ``align_corners`` (its weights are not built).
        data_preprocessor: The config's data preprocessor.
        test_cfg: The config's ``test_cfg`` (``mode='whole'`` or ``'slide'``).
        config_file: The config's file name, for error messages.
        num_threads: ONNX Runtime intra-op threads (0: its default).
        **unused: The config's other model keys (backbone, auxiliary head, ...), ignored.

    Raises:
        OnnxModelError: The file is not an ONNX model, or its input or output does not fit
            the config (the message names both files).
    """

    def __init__(
        self,
        onnx_file: str,
        decode_head: dict,
        data_preprocessor: dict | None = None,
        test_cfg: dict | None = None,
        config_file: str = "the config",
        num_threads: int = 0,
        **unused,
    ) -> None:
        # EncoderDecoder.__init__ would build the torch backbone and heads: skipped.
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor)
        self.onnx_file = str(onnx_file)
        self.test_cfg = ConfigDict(test_cfg or dict(mode="whole"))
        self.train_cfg = None
        head = _HeadSettings(decode_head)
        self.align_corners = head.align_corners
        self.num_classes = head.num_classes
        self.out_channels = head.out_channels
        self.decode_head = head  # BaseSegmentor.postprocess_result reads its threshold
        self.num_threads = num_threads
        self.session = open_session(self.onnx_file, num_threads)
        self.input_name, self.output_name = _check_signature(
            self.session, self.onnx_file, config_file, self.out_channels, self.test_cfg
        )

    def __getstate__(self) -> dict:
        # An ONNX Runtime session cannot be copied or pickled: a copy opens its own.
        return {key: value for key, value in self.__dict__.items() if key != "session"}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.session = open_session(self.onnx_file, self.num_threads)

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas: list[dict]) -> torch.Tensor:
        """Logits of a normalized batch at its own size, by ONNX Runtime."""
        image = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: image})
        return torch.from_numpy(logits).to(inputs.device)

    def _forward(self, inputs: torch.Tensor, data_samples=None) -> torch.Tensor:
        """``mode='tensor'``: the ONNX model's logits (at the input's size)."""
        return self.encode_decode(inputs, [])

    def extract_feat(self, inputs: torch.Tensor):
        raise NotImplementedError(
            f"{self.onnx_file}: an ONNX model gives logits only (no backbone features)."
        )

    def loss(self, inputs, data_samples):
        raise NotImplementedError(f"{self.onnx_file}: an ONNX model cannot be trained.")


class _HeadSettings:
    """The decode head's settings that mmseg's inference reads, without its weights."""

    def __init__(self, decode_head: dict) -> None:
        self.num_classes = int(decode_head["num_classes"])
        # mmseg's BaseDecodeHead rule: out_channels defaults to num_classes; 1 is binary.
        self.out_channels = int(decode_head.get("out_channels") or self.num_classes)
        threshold = decode_head.get("threshold")
        self.threshold = 0.3 if threshold is None and self.out_channels == 1 else threshold
        self.align_corners = bool(decode_head.get("align_corners", False))


def _check_signature(session, onnx_file: str, config_file: str, classes: int, test_cfg) -> tuple:
    """The input and output names, after checking that the model fits the config."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"ONNX model '{onnx_file}' does not fit config '{config_file}'"
    if len(inputs) != 1 or len(outputs) < 1:
        raise OnnxModelError(
            f"{where}: it has {len(inputs)} inputs and {len(outputs)} outputs; a segmentor "
            "export has one input (the image) and one output (the logits)."
        )
    image, logits = inputs[0].shape, outputs[0].shape
    if len(image) != 4 or image[1] != 3:
        raise OnnxModelError(f"{where}: its input has shape {image}, the config feeds N,3,H,W.")
    if len(logits) != 4 or logits[1] != classes:
        raise OnnxModelError(
            f"{where}: its output has shape {logits}, the config predicts {classes} classes "
            "(N,C,H,W); pass the config the model was exported from."
        )
    fixed = [size for size in image[2:] if isinstance(size, int)]
    if fixed:
        crop = list(test_cfg.get("crop_size", ())) if test_cfg.get("mode") == "slide" else []
        if list(image[2:]) != crop:
            raise OnnxModelError(
                f"{where}: its input size is fixed to {image[2:]}, but the config's test_cfg "
                f"feeds {'crops of ' + str(crop) if crop else 'whole images of any size'}; "
                "export with dynamic sizes (tools/deploy.py --onnx does)."
            )
    return inputs[0].name, outputs[0].name


def onnx_model_config(cfg: Config, onnx_file: str | os.PathLike) -> ConfigDict:
    """The ``model`` config of an :class:`OnnxEncoderDecoder` for a config's ONNX export.

    Takes the config's data preprocessor, test settings and decode-head settings; a
    tools/deploy.py ``*_deploy.py`` config and the training config give the same result.
    """
    model = cfg.model
    if "decode_head" not in model:
        raise OnnxModelError(
            f"Config '{cfg.filename}' has no model.decode_head; an ONNX model is tested with "
            "the (training or deploy) config of the segmentor it was exported from."
        )
    return ConfigDict(
        type="OnnxEncoderDecoder",
        onnx_file=os.fspath(onnx_file),
        decode_head=copy.deepcopy(model.decode_head),
        data_preprocessor=copy.deepcopy(model.get("data_preprocessor")),
        test_cfg=copy.deepcopy(model.get("test_cfg", dict(mode="whole"))),
        config_file=str(cfg.filename),
    )


def build_onnx_segmentor(
    cfg: Config, onnx_file: str | os.PathLike, num_threads: int = 0
) -> OnnxEncoderDecoder:
    """An :class:`OnnxEncoderDecoder` for ``onnx_file`` with ``cfg``'s settings, in eval
    mode, with ``cfg`` as its ``cfg`` (mmseg's inference API reads its test pipeline)."""
    from mmengine.registry import init_default_scope

    init_default_scope(cfg.get("default_scope", "mmseg"))
    model_cfg = onnx_model_config(cfg, onnx_file)
    model_cfg.num_threads = num_threads
    model = MODELS.build(model_cfg).eval()
    model.cfg = cfg
    return model
