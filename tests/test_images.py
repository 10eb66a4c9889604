"""io: Pillow's process-wide settings survive concurrent reads (evaluate decodes in threads)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from fcn_label.images import read_image, read_mask


def test_concurrent_reads_leave_pillow_bomb_guard_in_place(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "m.png")
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: (read_image(tmp_path / "a.png").shape, read_mask(tmp_path / "m.png").shape),
                            range(400)))
    assert out == [((8, 8, 3), (8, 8))] * 400
    assert Image.MAX_IMAGE_PIXELS == before and before is not None
