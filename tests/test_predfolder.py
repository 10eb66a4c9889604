"""The prediction folder's reader: the one photo finder, and a folder that is not one."""

from __future__ import annotations

import os

import pytest

from fcn_label.errors import InputError
from fcn_label.predfolder import PredictionFolder, find_photo


def test_find_photo_looks_under_images_only_when_given_and_in_a_fixed_order(tmp_path):
    root, images, elsewhere = tmp_path / "pred", tmp_path / "moved", tmp_path / "orig"
    for d in (root, images / "sub", elsewhere):
        d.mkdir(parents=True)
    src = elsewhere / "a.jpg"
    src.write_bytes(b"x")
    # under --images: the input's own suffix first, then any image suffix, then the input's file name
    (images / "sub" / "a.png").write_bytes(b"x")
    assert find_photo(root, "sub/a", str(src), images) == images / "sub" / "a.png"
    (images / "sub" / "a.jpg").write_bytes(b"x")
    assert find_photo(root, "sub/a", str(src), images) == images / "sub" / "a.jpg"
    (images / "sub" / "a.jpg").unlink()
    (images / "sub" / "a.png").unlink()
    (images / "sub" / "a.PNG").write_bytes(b"x")
    assert find_photo(root, "sub/a", str(src), images) in (images / "sub" / "a.PNG", images / "sub" / "a.png")
    (images / "sub" / "a.PNG").unlink()
    (images / "a.jpg").write_bytes(b"x")
    assert find_photo(root, "sub/a", str(src), images) == images / "a.jpg"
    (images / "a.jpg").unlink()
    assert find_photo(root, "sub/a", str(src), images) is None  # --images is where the photos are: no fallback
    # without --images: the recorded path, then relative to the folder holding the prediction folder
    assert find_photo(root, "sub/a", str(src), None) == src
    rel = os.path.relpath(src, tmp_path)
    assert find_photo(root, "sub/a", rel, None) == tmp_path / rel
    assert find_photo(root, "sub/a", "", None) is None


def test_a_folder_that_is_not_a_prediction_folder_is_one_line(tmp_path):
    with pytest.raises(InputError, match="folder not found; give the --out folder of `fcn-label predict`"):
        PredictionFolder(tmp_path / "nope")
    folder = PredictionFolder(tmp_path)
    assert folder.version == 1 and folder.categories() is None
    with pytest.raises(InputError, match="no .fcn-label/records folder"):
        folder.items()
    with pytest.raises(InputError, match="predictions.csv: not found"):
        folder.report()
