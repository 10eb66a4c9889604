"""Copy CamVid into a compact folder that fits the 64 MiB a GPU lease carries.

    python scripts/pack_camvid.py ../shared/data/camvid .gpu/camvid

Images become JPEG (quality 94, no chroma subsampling: 91+28 MB of PNG -> 36 MB);
masks are copied unchanged, and train.txt / val.txt are rewritten to match.
The shipped model was trained on this copy (scripts/gpu_session.sh); its card's
numbers come from `fcn-label evaluate` on the original PNG val images.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image


def main(src: str, dst: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    for split in ("train", "val"):
        lines = []
        for line in (src_p / f"{split}.txt").read_text().splitlines():
            if not line.strip():
                continue
            img, mask = line.split()
            jpg = Path(img).with_suffix(".jpg")
            for rel in (jpg, Path(mask)):
                (dst_p / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(src_p / img).convert("RGB").save(dst_p / jpg, quality=94, subsampling=0)
            shutil.copy(src_p / mask, dst_p / mask)
            lines.append(f"{jpg} {mask}")
        (dst_p / f"{split}.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(src_p / "classes.txt", dst_p / "classes.txt")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
