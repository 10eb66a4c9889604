"""One guard per file: an exception our readers do not anticipate (here Pillow's ValueError for a zTXt
chunk that inflates past PngImagePlugin.MAX_TEXT_CHUNK) becomes one failure row, and the batch goes on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from fcn_label.checkpoint import save_checkpoint
from fcn_label.cli import run_cli
from fcn_label.guard import guarded
from support.helpers import make_checkpoint, rand_image


def text_bomb_png(path, shape=(40, 48), mode="RGB"):
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    a = np.zeros(shape + ((3,) if mode == "RGB" else ()), np.uint8)
    Image.fromarray(a, mode=mode).save(path, pnginfo=info)
    with pytest.raises(ValueError):  # the premise: Pillow refuses it with an exception our readers do not map
        Image.open(path)
    return path


def cli(capsys, *args) -> tuple[int, str]:
    try:
        run_cli([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_guarded_returns_type_and_first_line_of_any_exception():
    def boom():
        raise RuntimeError("first\nsecond")

    assert guarded("x.png", boom) == (None, "x.png: RuntimeError: first; re-export or remove it")
    assert guarded("x.png", lambda: 3) == (3, None)


@pytest.mark.parametrize("workers", [0, 1])
def test_predict_reports_a_png_text_bomb_and_labels_the_rest(tmp_path, capsys, workers):
    model = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(), model)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rand_image(40, 48, 0)).save(src / "good.png")
    text_bomb_png(src / "bomb.png")
    code, err = cli(capsys, "predict", src, "--out", tmp_path / "out", "-w", model, "--parallel", f"workers={workers}", "-q")
    assert code == 1 and "Traceback" not in err
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bomb.png").exists()
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["path"]) == [str(src / "bomb.png")]
    assert "ValueError: Decompressed data too large" in failures["reason"][0]


def test_evaluate_reports_a_ground_truth_text_bomb_and_scores_the_rest(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    mask = np.zeros((40, 48), np.uint8)
    mask[:20] = 1
    Image.fromarray(mask, mode="L").save(gt / "a.png")
    Image.fromarray(mask, mode="L").save(pred / "a.png")
    text_bomb_png(gt / "b.png", mode="L")
    Image.fromarray(mask, mode="L").save(pred / "b.png")
    code, err = cli(capsys, "evaluate", "--gt", gt, "--pred", pred, "--num-classes", "2", "--out", tmp_path / "r", "-q")
    assert code == 1 and "Traceback" not in err
    summary = dict(pd.read_csv(tmp_path / "r" / "summary.csv").values)
    assert summary["images_evaluated"] == 1 and summary["images_failed"] == 1
    assert float(summary["pixel_accuracy"]) == 1.0
    failures = pd.read_csv(tmp_path / "r" / "failures.csv")
    assert "ValueError: Decompressed data too large" in failures["reason"][0]
