"""The cases a benchmark times for one segmentor: its forms under torch, its runtimes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..deploy import SegmentorLogits
from .models import BackboneOnly, deployed_copy
from .onnx_files import OnnxFile, engines_of
from .settings import Case

VARIANTS = ("train", "deploy", "winograd")
"""Forms of a segmentor under torch: as trained, deployed with direct convs, deployed with
Winograd convs (in the mode asked for)."""


def segmentor_cases(
    name: str,
    trained: nn.Module,
    variants: Sequence[str] = VARIANTS,
    runtimes: Sequence[str] = ("torch",),
    winograd: str = "auto",
    part: str = "segmentor",
    onnx_files: Sequence[OnnxFile] = (),
) -> list[Case]:
    """One case per variant under ``torch`` and one per other runtime (of the deployed model),
    then one per given ONNX file and ONNX engine named (:mod:`.onnx_files`).

    Args:
        name: What the case names start with (a config's stem).
        trained: The segmentor as built from its config.
        variants: Of :data:`VARIANTS`, timed under the ``torch`` runtime when it is listed.
        runtimes: Of :data:`repvgg_seg.benchmark.settings.RUNTIMES`.
        winograd: The ``winograd`` variant's mode (``off`` leaves the variant out).
        part: ``segmentor`` (logits at the input size) or ``backbone`` (its last output).
        onnx_files: Files exported from this segmentor's config, checked; each runs as it
            is, its MACs and parameters counted on the deployed model.
    """
    wrap = BackboneOnly if part == "backbone" else SegmentorLogits
    others = [runtime for runtime in runtimes if runtime != "torch"]
    deployed = deployed_copy(trained) if others or "deploy" in variants else None
    cases = []
    if "torch" in runtimes:
        if "train" in variants:
            cases.append(Case(f"{name} (train)", wrap(trained)))
        if "deploy" in variants:
            cases.append(Case(f"{name} (deploy)", wrap(deployed)))
        if "winograd" in variants and winograd != "off":
            model = deployed_copy(trained, winograd=winograd)
            cases.append(Case(f"{name} (deploy, winograd {winograd})", wrap(model)))
    cases += [Case(f"{name} (deploy) [{r}]", wrap(deployed), runtime=r) for r in others]
    cases += [
        Case(
            f"{name} ({file.path}) [{file.runtime(engine)}]",
            wrap(deployed),
            runtime=file.runtime(engine),
            onnx_file=file.path,
        )
        for file in onnx_files
        for engine in engines_of(runtimes)
    ]
    return cases


def with_treatments(cases: Sequence[Case], treatments: Sequence[str]) -> list[Case]:
    """Each torch case once per treatment (names suffixed), or as given when none are listed."""
    if not treatments:
        return list(cases)
    return [
        Case(f"{case.name} [{treatment}]", case.module, treatment)
        for case in cases
        for treatment in treatments
    ]
