"""The study's record of finished runs, shared by worker processes on one work dir."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

logger = logging.getLogger("quantization_study")


class Ledger:
    """``runs.jsonl``: one line per finished run, shared by worker processes.

    A worker claims a run by creating ``claims/<run>`` (exclusively) before training it, so
    several workers started on one work dir share the runs; a rerun skips finished ones.
    After an interrupted study, delete ``claims/`` before starting again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claims = path.parent / "claims"
        self.claims.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.records = {json.loads(line)["key"]: json.loads(line) for line in lines}

    def run(self, run: Any, compute: Callable[[], dict]) -> bool:
        """Computes ``run`` (a dataclass with a unique ``key``) unless it is finished or
        another worker has claimed it; returns whether this worker computed it."""
        if run.key in self.records:
            return False
        name = hashlib.sha1(run.key.encode()).hexdigest()[:16]
        try:
            os.close(os.open(self.claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        start = time.perf_counter()
        record = {"key": run.key, **asdict(run), **compute()}
        record["seconds"] = round(time.perf_counter() - start, 1)
        logger.info("%s", {k: v for k, v in record.items() if k != "key"})
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        self.records[run.key] = record
        return True
