"""PSPNet-A0 with RepVGG and QARepVGG blocks on synthetic Cityscapes: float vs INT8 vs QAT mIoU.

    python experiments/pspnet_int8.py [--work-dir work_dirs/pspnet_int8] [--iters 200]

Runs the tools as a user would, printing each command first:
``tools/make_synthetic_cityscapes.py`` (60 train, 12 val scenes at 256x128), ``tools/train.py`` on
``configs/pspnet_{repvgg,qarepvgg}_a0_synthetic.py`` for ``--iters`` iterations, then
``tools/quantize.py`` and ``tools/qat.py`` (its defaults: 200 iterations distilled from the
float model at LR 0.001), each per tensor and per channel (8 calibration crops, all 12 val
images, mmseg's IoUMetric). One seed, each config's own schedule: a smoke comparison, not a
study (the classifier study with seeds and an LR sweep is ``quantization_study.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEGMENTORS = ("pspnet_repvgg_a0_synthetic", "pspnet_qarepvgg_a0_synthetic")
# (tool, the form's name in the table); the tool's files are named "<stem>_{int8,qat}.*".
INT8_TOOLS = (("quantize", "INT8"), ("qat", "QAT"))
WEIGHTS = (("--no-per-channel", "per tensor"), ("--per-channel", "per channel"))
# One thread per process: on a shared 2-core machine a second one mostly waits on the first,
# and a fixed count keeps reruns equal (PSPNet's training loss differs in the fourth digit
# between one and two threads).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run(tool: str, *args: object) -> None:
    """Runs ``tools/<tool>.py`` as a user would, after printing its command line."""
    command = [sys.executable, f"tools/{tool}.py", *map(str, args)]
    print("$ OMP_NUM_THREADS=1 " + shlex.join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, **ONE_THREAD})


def int8_evaluation(
    tool: str, config: str, checkpoint: Path, out_dir: Path, flag: str, roots: list[str]
) -> dict:
    """``tools/quantize.py`` or ``tools/qat.py`` (once; its JSON report is reused).

    Returns:
        The ``evaluation`` entry of the tool's JSON report.
    """
    report = out_dir / f"{Path(config).stem}_{'qat' if tool == 'qat' else 'int8'}.json"
    if not report.exists():
        # A QAT work dir without a report is an interrupted run: start it over, as train does.
        restart = ("--overwrite-work-dir",) if tool == "qat" else ()
        run(
            tool,
            *(config, checkpoint, out_dir, flag, *restart),
            *("--calib-images", 8, "--eval-images", 12, "--max-miou-drop", 100),
            "--cfg-options",
            *roots,
        )
    return json.loads(report.read_text())["evaluation"]


def segmentor_rows(work_dir: Path, iters: int) -> dict[str, dict[str, tuple[float, float]]]:
    """``{config: {form: (mIoU, % of pixels as float)}}`` for both blocks and five forms."""
    data = work_dir / "synthetic_cityscapes"
    if not data.exists():
        run(
            "make_synthetic_cityscapes",
            data,
            "--num-train",
            60,
            "--num-val",
            12,
            "--size",
            256,
            128,
        )
    roots = [
        f"{loader}.dataset.data_root={data}"
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
    ]
    schedule = [
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        f"param_scheduler.0.end={iters}",
    ]
    rows = {}
    for name in SEGMENTORS:
        config, run_dir = f"configs/{name}.py", work_dir / name
        checkpoint = run_dir / f"iter_{iters}.pth"
        if not checkpoint.exists():
            run(
                "train",
                *(config, "--work-dir", run_dir, "--overwrite-work-dir"),
                *("--cfg-options", *roots, *schedule),
            )
        forms = {}
        for tool, label in INT8_TOOLS:
            for flag, weights in WEIGHTS:
                out_dir = run_dir / f"{label.lower()}_{weights.replace(' ', '-')}"
                evaluation = int8_evaluation(tool, config, checkpoint, out_dir, flag, roots)
                # Every report measures the same float model: the checkpoint's.
                forms["float"] = (evaluation["float32"]["mIoU"], 100.0)
                forms[f"{label} {weights}"] = (
                    evaluation["int8"]["mIoU"],
                    evaluation["pixel_agreement_percent"],
                )
        rows[name] = forms
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work_dirs" / "pspnet_int8")
    parser.add_argument("--iters", type=int, default=200, help="PSPNet iterations")
    args = parser.parse_args(argv)
    rows = segmentor_rows(args.work_dir, args.iters)
    forms = ("float", *(f"{label} {w}" for _, label in INT8_TOOLS for _, w in WEIGHTS))
    print("\nmIoU on the 12 synthetic val images (pixels predicted as by the float model, %)\n")
    print("| PSPNet-A0 | " + " | ".join(forms) + " |")
    print("|---" * (len(forms) + 1) + "|")
    for name, measured in rows.items():
        cells = [f"{measured['float'][0]:.2f}"]
        cells += [f"{measured[form][0]:.2f} ({measured[form][1]:.2f})" for form in forms[1:]]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
