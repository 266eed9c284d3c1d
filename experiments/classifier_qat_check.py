"""The quantization study's QAT settings, checked on its LR holdout (never on val).

    python experiments/classifier_qat_check.py

Each block (``simple`` preset, seed 0, the study's LR 0.05 per 256) trains as in the study on
3/4 of the digits' train split; its fused model is quantized (MinMax on 32 of those images)
and fine-tuned with each setting below on the same 3/4, and every form is scored on the other
1/4: top-1, and how often it predicts the float model's class. The study takes its
``QAT_LOSS``, ``QAT_LR`` and ``QAT_STEPS`` from this table (docs/qarepvgg.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import quantization_study as study
import torch

from repvgg_seg.quantize.classifier import ClassifierQAT, quantize_classifier
from repvgg_seg.reparam import reparameterize_model

# (loss, LR per batch of 64, steps)
SETTINGS = (
    ("distill", 1e-3, 32),
    ("labels", 1e-3, 32),
    ("distill", 1e-4, 32),
    ("labels", 1e-4, 32),
    ("distill", 1e-3, 96),
    ("labels", 1e-3, 96),
)
FORMS = ("int8 per-tensor", "int8 per-channel", "qat per-tensor", "qat per-channel")


def main() -> None:
    torch.set_num_threads(1)
    fit, score = study.holdout(study.digits()[0])
    print("| block | QAT loss, LR, steps | " + " | ".join(FORMS) + " |")
    print("|---|---|" + "---|" * len(FORMS))
    for model_name in study.BLOCKS:
        run = study.Run("qat-check", model_name, "simple", 0.05, 0, 5)
        model, top1 = study.train(run, fit, score)
        fused = reparameterize_model(model, inplace=False).eval()
        chosen = np.random.default_rng(0).choice(len(fit.labels), 32, replace=False)
        calibration = [fit.images[i : i + 1].numpy() for i in chosen]
        for loss, lr, steps in SETTINGS:
            qat = ClassifierQAT(fit.images, fit.labels, steps, lr, study.BATCH, loss, 0)
            with tempfile.TemporaryDirectory() as scratch:
                results = quantize_classifier(
                    fused,
                    study.IMAGE_SIZE,
                    calibration,
                    score.images.numpy(),
                    score.labels.numpy(),
                    Path(scratch),
                    num_threads=1,
                    qat=qat,
                )
            found = {r.name: f"{r.top1:.2f} ({r.agreement:.1f})" for r in results}
            label = f"{model_name} (float {top1:.2f})"
            cells = " | ".join(found[form] for form in FORMS)
            print(f"| {label} | {loss}, {lr:g}, {steps} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
