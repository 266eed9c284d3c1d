"""PSPNet-A0 with RepVGG and QARepVGG blocks on synthetic Cityscapes: float vs INT8 mIoU.

    python experiments/pspnet_int8.py [--work-dir work_dirs/pspnet_int8] [--iters 200]

Runs the tools as a user would, printing each command first:
``tools/make_synthetic_cityscapes.py`` (60 train, 12 val scenes at 256x128), ``tools/train.py`` on
``configs/pspnet_{repvgg,qarepvgg}_a0_synthetic.py`` for ``--iters`` iterations, then
``tools/quantize.py`` per tensor and per channel (8 calibration crops, all 12 val images,
mmseg's IoUMetric). One seed, each config's own schedule: a smoke comparison, not a study
(the classifier study with seeds and an LR sweep is ``quantization_study.py``).
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
# One thread per process: on a shared 2-core machine a second one mostly waits on the first.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run(tool: str, *args: object) -> None:
    """Runs ``tools/<tool>.py`` as a user would, after printing its command line."""
    command = [sys.executable, f"tools/{tool}.py", *map(str, args)]
    print("$ OMP_NUM_THREADS=1 " + shlex.join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, **ONE_THREAD})


def quantize(config: str, checkpoint: Path, out: Path, flag: str, roots: list[str]) -> dict:
    """``tools/quantize.py`` (once; its JSON report is reused); returns the evaluation."""
    report = out / f"{Path(config).stem}_int8.json"
    if not report.exists():
        run(
            "quantize",
            *(config, checkpoint, out, flag),
            *("--calib-images", 8, "--eval-images", 12, "--max-miou-drop", 100),
            "--cfg-options",
            *roots,
        )
    return json.loads(report.read_text())["evaluation"]


def segmentor_rows(work_dir: Path, iters: int) -> list[tuple[str, str, float, float]]:
    """(config, form, mIoU, % of pixels as float) for both blocks and the three forms."""
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
    rows = []
    for name in SEGMENTORS:
        config, run_dir = f"configs/{name}.py", work_dir / name
        checkpoint = run_dir / f"iter_{iters}.pth"
        if not checkpoint.exists():
            run(
                "train",
                *(config, "--work-dir", run_dir, "--overwrite-work-dir"),
                *("--cfg-options", *roots, *schedule),
            )
        for flag, form in (("--no-per-channel", "per-tensor"), ("--per-channel", "per-channel")):
            evaluation = quantize(config, checkpoint, run_dir / f"int8_{form}", flag, roots)
            if form == "per-tensor":
                rows.append((name, "float", evaluation["float32"]["mIoU"], 100.0))
            agreement = evaluation["pixel_agreement_percent"]
            rows.append((name, f"int8 {form}", evaluation["int8"]["mIoU"], agreement))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "work_dirs" / "pspnet_int8")
    parser.add_argument("--iters", type=int, default=200, help="PSPNet iterations")
    args = parser.parse_args(argv)
    rows = segmentor_rows(args.work_dir, args.iters)
    print(f"\n{'PSPNet (synthetic val)':<30}{'form':<18}{'mIoU':>10}{'pixels as float %':>20}")
    for model, form, value, agreement in rows:
        print(f"{model:<30}{form:<18}{value:10.2f}{agreement:20.2f}")


if __name__ == "__main__":
    main()
