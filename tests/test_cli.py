"""repvgg_seg.cli: the tools' shared conventions."""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

from repvgg_seg.cli import set_work_dir

ROOT = Path(__file__).resolve().parents[1]


def test_same_named_configs_of_the_two_families_get_distinct_work_dirs(tmp_path):
    work_dirs = {}
    for config in (ROOT / "configs" / "pspnet_r50.py", ROOT / "configs/mmseg_style/pspnet_r50.py"):
        cfg = Config()
        set_work_dir(cfg, config, None)
        work_dirs[config.parent.name] = cfg.work_dir
    assert work_dirs == {
        "configs": "work_dirs/pspnet_r50",
        "mmseg_style": "work_dirs/mmseg_style/pspnet_r50",
    }
    # Outside a configs/ folder: the config's name, as mmseg does.
    cfg = Config()
    set_work_dir(cfg, tmp_path / "mine.py", None)
    assert cfg.work_dir == "work_dirs/mine"
    # --work-dir, then the config's own work_dir, win over the default.
    cfg = Config(dict(work_dir="runs/a"))
    set_work_dir(cfg, ROOT / "configs/mmseg_style/pspnet_r50.py", None)
    assert cfg.work_dir == "runs/a"
    set_work_dir(cfg, ROOT / "configs/mmseg_style/pspnet_r50.py", "runs/b")
    assert cfg.work_dir == "runs/b"
