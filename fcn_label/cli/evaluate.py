"""`fcn-label evaluate` (in progress)."""
