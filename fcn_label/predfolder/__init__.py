"""The prediction folder: everything ``fcn-label predict`` writes under --out, and the one way to read it.

layout.py (every path, once), version.py (the format version stored in the folder),
outputs.py (mask / overlay / confidence PNGs and COCO RLE), records.py (the record store),
reports.py (predictions.csv / .json and failures.csv, assembled from the records),
reader.py (:class:`PredictionFolder`: what evaluate, review, select and export read),
remote.py (writing the same folder on an object store, which has no rename, append or lock).
The format is described for users in docs/prediction-folder.md.
"""

from .._lazy import lazy_attributes
from .layout import OutputLayout, Palette

_WHERE = {"FORMAT_VERSION": ".version",
          **{n: ".reader" for n in ("PredictionFolder", "PredItem", "Report", "Row", "find_photo",
                                    "mask_folder_pictures", "read_report")}}

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = ["FORMAT_VERSION", "OutputLayout", "Palette", "PredItem", "PredictionFolder", "Report", "Row",
           "find_photo", "mask_folder_pictures", "read_report"]
