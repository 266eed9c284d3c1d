"""The atomic writer and the guard of a claimed folder (:mod:`repvgg_seg.atomic_io`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from repvgg_seg.atomic_io import (
    guard_folder,
    guard_of,
    marked_temporary,
    remove_marked,
    write_atomically,
)


class Refusing:
    """A guard that refuses every file named ``keep.txt`` and records the rest."""

    marker = "0badc0de"

    def __init__(self) -> None:
        self.wrote_names: list[str] = []

    def admit(self, path: Path) -> None:
        if path.name == "keep.txt":
            raise PermissionError(f"{path} is not ours")

    def wrote(self, path: Path, temporary: Path) -> None:
        assert temporary.name.startswith(f".{path.name}.{self.marker}.")
        self.wrote_names.append(path.name)


@pytest.fixture
def guarded(tmp_path):
    guard = Refusing()
    guard_folder(tmp_path, guard)
    yield guard
    guard_folder(tmp_path, None)


def test_a_guard_is_asked_for_every_write_below_its_folder(tmp_path, guarded):
    keep = tmp_path / "a" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    with pytest.raises(PermissionError, match="not ours"):
        write_atomically(keep, lambda file: file.write(b"x"))
    assert keep.read_text() == "mine" and sorted(p.name for p in keep.parent.iterdir()) == [
        "keep.txt"
    ]
    write_atomically(tmp_path / "a" / "b" / "new.txt", lambda file: file.write(b"x"))
    assert guarded.wrote_names == ["new.txt"] and guard_of(tmp_path / "a" / "x") is guarded


def test_a_folder_no_one_claims_has_no_guard(tmp_path):
    assert guard_of(tmp_path / "x.txt") is None
    path = write_atomically(tmp_path / "x.txt", lambda file: file.write(b"1"))
    assert path.read_bytes() == b"1"


def test_only_names_carrying_the_marker_are_its_temporaries(tmp_path):
    marker = "0badc0de"
    assert marked_temporary(f".iter_2.pth.{marker}.k1ll3d_x.part", marker)
    for name in (".name.x1y2z3w4.part", f".x.{marker}.part", f"x.{marker}.abcdefgh.part"):
        assert not marked_temporary(name, marker), name
    assert not marked_temporary(".iter_2.pth.k1ll3d_x.part", "")
    (tmp_path / f".a.png.{marker}.abcdefgh.part").write_bytes(b"x")
    (tmp_path / ".a.png.abcdefgh.part").write_bytes(b"x")
    (tmp_path / f".m_int8.{marker}.abcdefgh.staging").mkdir()
    removed = remove_marked(tmp_path, marker)
    assert sorted(p.name for p in removed) == [
        f".a.png.{marker}.abcdefgh.part",
        f".m_int8.{marker}.abcdefgh.staging",
    ]
    assert [p.name for p in tmp_path.iterdir()] == [".a.png.abcdefgh.part"]
