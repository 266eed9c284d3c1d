"""A work dir that a release before the record ``.repvgg_seg-written`` trained in.

Such a work dir has no record, so its checkpoints and config dump count as no tool's files:
``--resume`` would be refused until the dump is moved. It is adopted (its files recorded as a
training's, said in one log line) only when the files a training replaces or deletes are
exactly what a training of this config leaves (docs/guarantees.md, "Outputs"):

- the config dump ``<config name>.py`` equals this run's dump, but for the keys a run sets
  itself (``work_dir``, ``resume``, ``load_from``, ``launcher``, the experiment's name);
- each ``iter_<n>.pth``, ``epoch_<n>.pth`` and ``best_<metric>_iter_<n>.pth`` (the names
  mmengine's ``CheckpointHook`` gives) is an mmengine checkpoint (``meta`` and
  ``state_dict``) that fits this config's model strictly
  (:func:`~repvgg_seg.loader.check_resumable`, through the one reader);
- ``last_checkpoint`` is empty or names one of them.

Anything else adopts nothing: the claim then refuses the file by name, as for any folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mmengine.config import Config

from ..checkpoint import CheckpointError, read_checkpoint
from ..loader import build_segmentor, check_resumable
from ..output_dir import OutputDir
from ..work_dir import LAST_CHECKPOINT, earlier_run_files

# The names mmengine's CheckpointHook writes (filename_tmpl 'iter_{}.pth' / 'epoch_{}.pth',
# the best one 'best_<metric>_<that name>').
MMENGINE_CHECKPOINT = re.compile(r"^(best_.+_)?(iter|epoch)_\d+\.pth$")
# Top-level keys of a config dump that tools/train.py sets per run.
_RUN_KEYS = re.compile(r"^(work_dir|resume|load_from|launcher) = .*\n?", re.MULTILINE)
_EXPERIMENT = re.compile(r"^experiment_name = '([^'\n]+)'$", re.MULTILINE)


def adopt_earlier_release(claim: OutputDir, cfg: Config, dump: str | None) -> tuple[list, str]:
    """Records a record-less work dir's training files as a training's, if they are exactly
    that (see the module docstring). Call it holding the claim, before planning the start.

    Args:
        claim: The work dir's claim.
        cfg: This run's config (what it dumps, the model its checkpoints must fit).
        dump: The name of the config dump in the work dir (None: time-stamped, not checked).

    Returns:
        The files adopted, and why none were ('' when adopted, or nothing to adopt).
    """
    if claim.record.path.exists():
        return [], ""
    files = earlier_run_files(claim.path)
    if dump is not None and (claim.path / dump).is_file():
        files.append(claim.path / dump)
    if not files:
        return [], ""
    model = None
    names = {path.name for path in files}
    for path in files:
        if path.name == dump:
            problem = _unlike_dump(path, cfg)
        elif path.name == LAST_CHECKPOINT:
            named = path.read_text(errors="replace").strip()
            problem = "names a file that is not one of its checkpoints" * bool(
                named and os.path.basename(named) not in names
            )
        else:
            model = model or build_segmentor(cfg)
            problem = _not_a_checkpoint_of(path, cfg, model)
        if problem:
            return [], f"'{path}' {problem}"
    claim.record_written(files)
    return files, ""


def _unlike_dump(path: Path, cfg: Config) -> str:
    earlier, now = path.read_text(errors="replace"), cfg.pretty_text
    # Each run names itself (experiment_name, and the visualizer's name after it).
    names = [_EXPERIMENT.search(text) for text in (earlier, now)]
    if all(names):
        earlier = earlier.replace(names[0].group(1), names[1].group(1))
    same = _RUN_KEYS.sub("", earlier) == _RUN_KEYS.sub("", now)
    return "" if same else "is not this config's dump"


def _not_a_checkpoint_of(path: Path, cfg: Config, model) -> str:
    if not MMENGINE_CHECKPOINT.match(path.name):
        return "is not named like an mmengine checkpoint"
    try:
        contents = read_checkpoint(path)
        if not isinstance(contents, dict) or not {"meta", "state_dict"} <= set(contents):
            return "is not an mmengine training checkpoint (no meta and state_dict)"
        check_resumable(cfg, path, contents=contents, model=model)
    except CheckpointError as error:
        return f"is not a checkpoint of this config ({error})"
    return ""
