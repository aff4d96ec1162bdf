"""artifacts.atomic_copytree: a folder copy that is whole or absent, never half there."""

import shutil

import pytest

from safegene_runtime.artifacts import atomic_copytree


def test_the_copy_is_whole_and_leaves_no_temp_folder(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    dst = atomic_copytree(src, tmp_path / "out" / "copy")
    assert dst == tmp_path / "out" / "copy"
    assert (dst / "a.txt").read_text() == "a" and (dst / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy"]


def test_a_failed_copy_leaves_nothing_at_the_destination(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")  # copied before the failure
    (src / "z-link").symlink_to(tmp_path / "missing")  # copytree cannot copy a dangling link: it fails after a.txt
    with pytest.raises(shutil.Error):
        atomic_copytree(src, tmp_path / "out" / "copy")
    assert list((tmp_path / "out").iterdir()) == []
