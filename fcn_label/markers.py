"""Names of the hidden files fcn-label leaves in folders it writes, owned by no verb.

predict keeps its state under :data:`STATE_DIR`; export marks its --out with
:data:`EXPORT_MARKER`, and the CVAT dataset reader looks for that marker to know
a labelmap is ours. Both sides import the names from here, so the datasets
package does not import predict.
"""

from __future__ import annotations

STATE_DIR = ".fcn-label"
# hidden: never taken for an image or a LabelMe file
EXPORT_MARKER = f"{STATE_DIR}-export.json"
