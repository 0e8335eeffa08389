"""Output paths: refused before any work when they are inputs, folders or unwritable; staged writes leave nothing on failure."""

from __future__ import annotations

import os

import pytest

from DiffRegLogic.errors import InputError
from DiffRegLogic.validation.outputs import Outputs, same_file


@pytest.fixture()
def inputs(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"ct")
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "1.dcm").write_bytes(b"dicom")
    return ct, dicom


def test_an_output_that_is_an_input_is_refused_also_through_links(tmp_path, inputs):
    ct, dicom = inputs
    (tmp_path / "link.nii.gz").symlink_to(ct)
    os.link(ct, tmp_path / "hard.nii.gz")
    outputs = Outputs([ct, dicom, None, "phantom"])
    for path in (ct, tmp_path / "link.nii.gz", tmp_path / "hard.nii.gz", tmp_path / "x" / ".." / "ct.nii.gz"):
        with pytest.raises(InputError, match=r"--out .* is the input .*ct.nii.gz: an input is never overwritten"):
            outputs.file(path, "--out")
    with pytest.raises(InputError, match="inside the input folder"):
        outputs.file(dicom / "result.json", "--out")
    assert ct.read_bytes() == b"ct"


def test_two_outputs_on_one_path_are_refused(tmp_path):
    outputs = Outputs()
    outputs.file(tmp_path / "a.png", "--overlay")
    with pytest.raises(InputError, match="--curve .* is also --overlay"):
        outputs.file(tmp_path / "a.png", "--curve")


def test_folders_files_and_unwritable_parents(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    outputs = Outputs()
    with pytest.raises(InputError, match="is a folder; give a file name"):
        outputs.file(tmp_path, "--out")
    with pytest.raises(InputError, match="file.txt is a file, not a folder"):
        outputs.file(blocker / "sub" / "r.json", "--out")
    with pytest.raises(InputError, match="is a file; give a folder"):
        outputs.folder(blocker, "--out")
    if os.geteuid() != 0:  # root writes everywhere; os.access says so
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="cannot write into"):
            outputs.file(locked / "r.json", "--out")
    assert outputs.file(tmp_path / "new" / "deeper" / "r.json", "--out").name == "r.json"
    assert not (tmp_path / "new").exists()  # declaring creates nothing


def test_staged_writes_move_into_place_only_on_success(tmp_path):
    outputs = Outputs()
    final = outputs.file(tmp_path / "a" / "b" / "r.nii.gz", "--out")
    with outputs.staged() as stage:
        temporary = stage.path(final)
        assert temporary.parent == final.parent and temporary.name.endswith(".partial.nii.gz")
        temporary.write_bytes(b"result")
        assert not final.exists()
    assert final.read_bytes() == b"result"
    assert sorted(p.name for p in final.parent.iterdir()) == ["r.nii.gz"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_block_leaves_nothing(tmp_path, error):
    previous = tmp_path / "old.json"
    previous.write_text("old")
    outputs = Outputs()
    with pytest.raises(error):
        with outputs.staged() as stage:
            stage.path(tmp_path / "new" / "r.json").write_text("partial")
            stage.path(previous).write_text("new")
            stage.folder(tmp_path / "folder")
            raise error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]
    assert previous.read_text() == "old"


def test_same_file():
    assert same_file("/tmp", "/tmp/.")
    assert not same_file("/tmp/a-missing", "/tmp/b-missing")


@pytest.mark.parametrize("name", ["drr.NPY", "drr.MHA", "drr.Nii.Gz", "b" * 245 + ".nrrd"])
def test_upper_case_and_long_names_are_written_exactly_once(tmp_path, name):
    """Found in review: numpy appends .npy to other endings, ITK writes .mhd + .raw for .MHA, and the temporary
    name must fit the file system's 255 bytes."""
    import numpy as np

    from DiffRegLogic.xray.files import write_image

    outputs = Outputs()
    final = outputs.file(tmp_path / name, "--out")
    with outputs.staged() as stage:
        write_image(stage.path(final), np.zeros((4, 5), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_writer_that_wrote_nothing_and_a_failed_move_leave_nothing(tmp_path):
    outputs = Outputs()
    with pytest.raises(RuntimeError, match="wrote no file"):
        with outputs.staged() as stage:
            stage.path(tmp_path / "a.json").write_text("a")
            stage.path(tmp_path / "b.json")  # never written
    (tmp_path / "c.json").mkdir()
    with pytest.raises(InputError, match="cannot write"):
        with outputs.staged() as stage:
            stage.path(tmp_path / "c.json").write_text("c")  # the destination is a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_folder_outputs_check_their_file_names_and_folder_inputs(tmp_path, inputs):
    ct, dicom = inputs
    (tmp_path / "out" / "result.json").mkdir(parents=True)
    with pytest.raises(InputError, match="result.json in it is a folder"):
        Outputs().folder(tmp_path / "out", "--out", ["result.json"])
    with pytest.raises(InputError, match="is the input"):
        Outputs([dicom]).folder(dicom, "--out", ["landscape.csv"])
    with pytest.raises(InputError, match=r"--out \(ct.nii.gz\) .* is the input"):
        Outputs([ct]).folder(tmp_path, "--out", ["ct.nii.gz"])
    with pytest.raises(InputError, match="File name too long"):
        Outputs().file(tmp_path / ("a" * 300 + ".json"), "--out")
