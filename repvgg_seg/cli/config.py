"""A tool's config: the file, ``--cfg-options`` and the work dir."""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Sequence
from pathlib import Path

from mmengine import config as mmengine_config
from mmengine.config import Config

from ..errors import UsageError
from .run import one_line


class DictAction(mmengine_config.DictAction):
    """``--cfg-options KEY=VALUE ...`` as mmengine's ``DictAction`` reads them, and also
    dict values the way mmseg configs write them:
    ``model.backbone.init_cfg=dict(type='Pretrained',checkpoint='x.pth')``.

    mmengine's own parser recurses until Python stops it (a 45-line ``RecursionError``) on
    any value with a comma inside ``name(...)``: its bracket scan finds no top-level comma
    and parses the whole value again. A value with ``dict(`` is read here as a Python
    expression of literals, lists, tuples and ``dict(...)`` calls (a bare word or path is a
    string, as mmengine reads one); a value that neither reads is one line naming it.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Sequence[str] | None,
        option_string: str | None = None,
    ) -> None:
        options = dict(getattr(namespace, self.dest, None) or {})
        for option in values or ():
            key, equals, text = option.partition("=")
            if not equals or not key:
                raise UsageError(f"{option_string} {option!r}: pass KEY=VALUE, e.g. a.b=1.")
            options[key] = option_value(text, f"{option_string} {option!r}")
        setattr(namespace, self.dest, options)


def option_value(text: str, where: str) -> object:
    """The value of one ``--cfg-options`` item (``where`` names it in an error)."""
    if "dict(" not in text.replace(" ", ""):
        try:
            return mmengine_config.DictAction._parse_iterable(text)
        except (AssertionError, RecursionError) as error:  # mmengine asserts balanced brackets
            raise UsageError(
                f"{where}: cannot be read as a value (unbalanced brackets, or a comma inside "
                "name(...)); write a list as [a,b] and a dict as dict(k=v)."
            ) from error
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body, text.strip())
    except (SyntaxError, ValueError) as error:
        raise UsageError(
            f"{where}: cannot be read as a value ({one_line(error)}); quote the strings in "
            "it, e.g. dict(type='Pretrained',checkpoint='/data/b2.pth')."
        ) from error


def _literal(node: ast.expr, source: str) -> object:
    """``node`` of ``source`` as a value: literals, [...], (...), {...} and dict(k=v, ...)."""
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "dict" and not node.args:
        if any(keyword.arg is None for keyword in node.keywords):
            raise ValueError("dict(**...) is not a value")
        return {keyword.arg: _literal(keyword.value, source) for keyword in node.keywords}
    if isinstance(node, ast.List | ast.Tuple):
        items = [_literal(item, source) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, source): _literal(v, source) for k, v in zip(node.keys, node.values)}
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Call):
            raise ValueError(f"{ast.get_source_segment(source, node)} is not a value") from None
        return ast.get_source_segment(source, node)  # a bare word or path: mmengine's rule


def load_config(path: str | os.PathLike, cfg_options: dict | None = None) -> Config:
    """The config file with ``--cfg-options`` merged in.

    Raises:
        UsageError: The file does not exist, is not a config, or an option does not apply.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"Config file '{path}' does not exist (working directory: {os.getcwd()}); pass "
            "one of the files under configs/, e.g. configs/pspnet_repvgg_a0_synthetic.py."
        )
    try:
        cfg = Config.fromfile(str(path))
    except Exception as error:  # mmengine raises SyntaxError, KeyError, ImportError, ...
        raise UsageError(f"Config file '{path}' cannot be read: {one_line(error)}") from error
    if cfg_options:
        data_root = cfg.get("data_root")
        try:
            cfg.merge_from_dict(_replacing_no_dict(cfg, cfg_options))
        except Exception as error:
            raise UsageError(
                f"--cfg-options do not apply to '{path}': {one_line(error)}"
            ) from error
        if "data_root" in cfg_options and data_root is not None:
            _move_data_root(cfg, data_root, cfg.data_root)
    return cfg


def _move_data_root(cfg: Config, old: str, new: str) -> None:
    """``--cfg-options data_root=DIR`` reaches every dataloader's dataset that read the
    config's ``data_root``: mmengine copies the variable into them when it loads the file, so
    setting it afterwards alone would change nothing that reads data. A dataset given its own
    root (by the file or by another option) keeps it."""
    for key, value in cfg.items():
        if not key.endswith("_dataloader") or not isinstance(value, dict):
            continue
        dataset = value.get("dataset")
        while isinstance(dataset, dict):  # wrappers (RepeatDataset, ...) hold theirs inside
            if dataset.get("data_root") == old:
                dataset["data_root"] = new
            dataset = dataset.get("dataset")


def set_work_dir(cfg: Config, config_path: str | os.PathLike, work_dir: str | None) -> None:
    """mmseg's rule: ``--work-dir``, else the config's ``work_dir``, else
    ``work_dirs/<config name>``, where a config under a ``configs/`` folder is named by its
    path there: ``configs/mmseg_style/pspnet_r50.py`` -> ``work_dirs/mmseg_style/pspnet_r50``,
    so that the two config families' same-named files never share a work dir."""
    if work_dir:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        parts = Path(config_path).resolve().with_suffix("").parts
        below = len(parts) - parts[::-1].index("configs") if "configs" in parts else -1
        cfg.work_dir = os.path.join("work_dirs", *parts[below:])


def format_options(options: Sequence[str]) -> str:
    """``a, b or c`` for a message listing the accepted values."""
    options = list(options)
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _replacing_no_dict(cfg: Config, cfg_options: dict) -> dict:
    """``cfg_options`` where a dict value whose key holds no dict in ``cfg`` (mmseg's
    ``init_cfg=None``) replaces it, as asked, instead of failing mmengine's merge; into a
    dict, a dict merges (mmengine's rule)."""
    options, tree = {}, cfg.to_dict()
    for key, value in cfg_options.items():
        node: object = tree
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = None
                break
        if isinstance(value, dict) and not isinstance(node, dict):
            value = {**value, "_delete_": True}
        options[key] = value
    return options
