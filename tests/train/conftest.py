"""Fixtures the finetune tests share."""

from __future__ import annotations

import pytest

import fcn_label.cli.finetune as finetune_cli
from fcn_label.cli import run_cli
from fcn_label.train import TrainConfig


@pytest.fixture
def parsed_config(monkeypatch):
    """The TrainConfig the finetune CLI would train with for ``fcn-label finetune ARGV`` (a stand-in
    Trainer records it instead of training)."""
    seen = {}

    class Recorder:
        def __init__(self, cfg, log, progress):
            seen["cfg"] = cfg
            self.best, self.epoch, self.step, self.total_steps = -1.0, 0, 0, 0

        def run(self, resume=None):
            return {}

    monkeypatch.setattr(finetune_cli, "Trainer", Recorder)

    def parse(argv: list[str]) -> TrainConfig:
        with pytest.raises(SystemExit) as e:
            run_cli(["finetune", *argv])
        assert (e.value.code or 0) == 0, f"finetune {' '.join(argv)} exited {e.value.code}"
        return seen["cfg"]

    return parse
