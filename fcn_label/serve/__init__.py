"""`fcn-label serve`: a Label Studio ML backend, so that the mask is already there when a task opens.

labelconfig.py (the BrushLabels over an Image the backend answers), fetch.py (task images, the way
Label Studio serves them and no other), model.py (the served weights, their version, the atomic
switch), training.py (fine-tuning rounds on the submitted annotations, in a child process),
server.py (the HTTP routes: /health, /setup, /predict, /webhook, /train; limits and auth).
"""

from .._lazy import lazy_attributes

_WHERE = {"BrushTarget": ".labelconfig", "brush_target": ".labelconfig", "FetchError": ".fetch",
          "ImageFetcher": ".fetch", "ModelStore": ".model", "model_version": ".model", "Learner": ".training",
          "Recipe": ".training", "Backend": ".server", "make_server": ".server"}

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = sorted(_WHERE)
