"""Dataset layouts: every layout loads the same pairs; what is missing is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fcn_label.datasets import load_pairs
from fcn_label.train import SegmentationDataset

from support.synth import make_arrays


def _rle(binary: np.ndarray) -> dict:
    """Uncompressed COCO RLE: run lengths over the column-major pixels, starting with a 0-run."""
    flat = binary.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(binary.shape), "counts": counts}


def _four_layouts(root: Path) -> dict[str, Path]:
    """One dataset of 3 classes + a crowd (ignore) region, written as VOC, folders, list file and COCO JSON."""
    triples = make_arrays(4, classes=3, seed=3)
    for _, _, mask in triples:
        mask[-4:, -6:] = 255  # a crowd region: iscrowd in COCO, the ignore label elsewhere
    voc, folders, lst, coco = root / "voc", root / "folders", root / "list", root / "coco"
    for d in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation",
              folders / "images" / "sub", folders / "masks" / "sub", lst / "img", lst / "ann", coco / "images"):
        d.mkdir(parents=True)
    images, anns, lines = [], [], []
    for k, (stem, img, mask) in enumerate(triples):
        jpg = voc / "JPEGImages" / f"{stem}.jpg"
        Image.fromarray(img).save(jpg, quality=95)
        png = voc / "SegmentationClass" / f"{stem}.png"
        Image.fromarray(mask, mode="L").save(png)
        for d_img, d_msk in ((folders / "images" / "sub", folders / "masks" / "sub"), (lst / "img", lst / "ann")):
            shutil.copy(jpg, d_img)
            shutil.copy(png, d_msk)
        shutil.copy(jpg, coco / "images")
        lines.append(f"img/{stem}.jpg ann/{stem}.png")
        images.append({"id": k + 1, "file_name": f"{stem}.jpg", "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        for c, cat in ((1, 7), (2, 3)):  # category ids out of order: classes follow ascending id, so 3 -> 1, 7 -> 2
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": cat, "iscrowd": 0,
                         "segmentation": _rle(mask == (2 if cat == 7 else 1))})
        anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 3, "iscrowd": 1,
                     "segmentation": _rle(mask == 255)})
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(t[0] for t in triples) + "\n")
    (lst / "train.txt").write_text("\n".join(lines) + "\n")
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    (coco / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"voc": voc, "folders": folders, "list": lst / "train.txt", "coco": coco / "instances.json"}


def _loaded(source: Path, split: str | None = None) -> dict[str, tuple[bytes, bytes]]:
    pairs, problems, coco = load_pairs(source, split=split)
    assert not problems
    ds = SegmentationDataset(pairs, coco=coco)
    out = {}
    for i, p in enumerate(ds.pairs):
        img, mask = ds.load(i)
        out[p.image.stem] = (img.tobytes(), mask.tobytes())
    return out


def test_every_layout_loads_the_same_pairs(tmp_path):
    src = _four_layouts(tmp_path)
    voc = _loaded(src["voc"], split="train")
    assert len(voc) == 4
    masks = [np.frombuffer(m, np.uint8) for _, m in voc.values()]
    assert all({0, 1, 2, 255} <= set(np.unique(m)) for m in masks)  # every class and the ignore label present
    assert _loaded(src["voc"]) == voc  # no split: every mask in SegmentationClass/
    assert _loaded(src["folders"]) == voc
    assert _loaded(src["list"]) == voc
    # COCO: categories 3 and 7 become classes 1 and 2, iscrowd becomes the ignore label
    assert _loaded(src["coco"]) == voc


def test_missing_partners_are_reported_with_their_names(tmp_path):
    src = _four_layouts(tmp_path)
    (src["folders"] / "masks" / "sub" / "img01.png").unlink()
    pairs, problems, _ = load_pairs(src["folders"])
    assert len(pairs) == 3 and len(problems) == 1 and "img01.jpg" in problems[0]
