"""`fcn-label finetune` (in progress)."""
