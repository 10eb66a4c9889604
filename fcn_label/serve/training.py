"""Learning from corrections: one fine-tuning round at a time, in a child process, switched in atomically.

A round reads the project's submitted annotations (from Label Studio's API, or those a /train
call carries), fetches their images through the same :class:`~.fetch.ImageFetcher` as /predict,
and writes them as a Label Studio JSON export that :mod:`fcn_label.datasets.labelstudio` reads
(the reader `fcn-label finetune` uses on an export). A child process
(``python -m fcn_label.serve.training CONFIG``) fine-tunes from the served weights with
:class:`fcn_label.train.Trainer`; only when it exits cleanly are its weights installed
(:meth:`.model.ModelStore.install`). A child that fails or is killed, even with SIGKILL, leaves
the served model and ``current.json`` as they were; the round's folder keeps its log.

The recipe for a few images (the epochs and learning rate) was chosen by measurement: see
benchmarks/few_corrections.py and the Label Studio page of the docs.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.labelstudio import read as read_corrections
from ..errors import InputError
from ..guard import failure_message
from ..images import write_text_atomic
from .fetch import ImageFetcher
from .labelconfig import brush_target
from .model import ModelStore

ROUNDS = "rounds"
# the recipe for a few corrected images: finetune's preset with a tenth of its learning rate (the docs'
# table: the preset's own rate, or a frozen backbone, lowered mean IU on the images nobody corrected)
DEFAULT_LR = 2e-4
PARENT_ENV = "FCN_LABEL_SERVE_PARENT"
DEFAULT_EPOCHS = 50


@dataclass
class Recipe:
    """What a round trains with; ``lr`` None keeps the preset's."""

    epochs: int = DEFAULT_EPOCHS
    lr: float | None = DEFAULT_LR
    freeze_backbone: bool = False  # see freeze_backbone(); measured to lose, kept for comparison
    device: str = "auto"
    threads: int = 0


@dataclass
class RoundState:
    number: int
    started: float
    tasks: int = 0
    finished: float | None = None
    ok: bool | None = None
    version: str | None = None
    message: str = ""
    pid: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def annotated(task: dict) -> bool:
    return isinstance(task, dict) and any(isinstance(a, dict) and not a.get("was_cancelled")
                                          for a in task.get("annotations") or [])


@dataclass
class Learner:
    """Runs training rounds for the backend; at most one at a time, and at most one more waiting."""

    store: ModelStore
    fetcher: ImageFetcher
    recipe: Recipe = field(default_factory=Recipe)
    log: object = print
    current: RoundState | None = None
    last: RoundState | None = None

    def __post_init__(self):
        self._lock = threading.Lock()
        self._pending: tuple | None = None
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen | None = None
        self._closed = False
        rounds = self.store.state / ROUNDS
        rounds.mkdir(parents=True, exist_ok=True)
        self._count = max([int(p.name) for p in rounds.iterdir() if p.name.isdigit()], default=0)

    def status(self) -> dict:
        with self._lock:
            return {"training": self.current is not None, "pending": self._pending is not None,
                    "current": self.current.as_dict() if self.current else None,
                    "last": self.last.as_dict() if self.last else None}

    def submit(self, project: object, label_config: str | None, tasks: list[dict] | None) -> str:
        """Start a round (or queue one behind the running one) on ``tasks``, or on the project's annotations."""
        with self._lock:
            if self._closed:
                return "shutting down"
            if self.current is not None:
                self._pending = (project, label_config, tasks)
                return "queued behind the running round"
            self._start(project, label_config, tasks)
            return f"round {self._count} started"

    def _start(self, project, label_config, tasks) -> None:
        self._count += 1
        self.current = RoundState(self._count, time.time())
        self._thread = threading.Thread(target=self._run, args=(self.current, project, label_config, tasks),
                                        name=f"fcn-label-train-{self._count}", daemon=True)
        self._thread.start()

    def _run(self, st: RoundState, project, label_config, tasks) -> None:
        try:
            st.version = self._round(st, project, label_config, tasks)
            st.ok, st.message = True, f"serving {st.version}"
        except Exception as e:  # the round's boundary: the served model stays, the reason is kept
            st.ok, st.message = False, failure_message(f"training round {st.number}", e)
        st.finished = time.time()
        self.log(st.message)
        with self._lock:
            self.last, self.current, self._child = st, None, None
            nxt, self._pending = self._pending, None
            if nxt is not None and not self._closed:
                self._start(*nxt)

    def _project_id(self, project) -> int:
        pid = project.get("id") if isinstance(project, dict) else project
        if isinstance(pid, str):  # /train sends "ID.TIMESTAMP"
            pid = pid.split(".")[0]
        try:
            return int(pid)
        except (TypeError, ValueError):
            raise InputError(f"project {project!r}: expected a project id") from None

    def _round(self, st: RoundState, project, label_config, tasks) -> str:
        folder = self.store.state / ROUNDS / f"{st.number:04d}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        if tasks is None or label_config is None:
            pid = self._project_id(project)
            if label_config is None:
                label_config = self.fetcher.api_json(f"/api/projects/{pid}").get("label_config")
            if tasks is None:
                tasks = self.fetcher.api_json(f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=false")
        served = self.store.served
        target = brush_target(label_config, list(served.classes))
        used, problems = [], []
        for t in tasks if isinstance(tasks, list) else []:
            if not annotated(t) or not isinstance(t.get("data"), dict):
                continue
            tid = t.get("id")
            key = f"task-{tid}"
            try:
                arr = self.fetcher.fetch(t["data"].get(target.data_key), tid)
                from PIL import Image

                Image.fromarray(arr).save(folder / "images" / f"{key}.png")
            except Exception as e:  # one task's image: a line in the log, the others train
                problems.append(failure_message(f"task {tid}", e))
                continue
            t = copy.deepcopy(t)
            t["data"]["fcn_label_key"], t["data"]["fcn_label_classes"] = key, list(served.classes)
            used.append(t)
        for p in problems:
            self.log(f"warning: {p}")
        if not used:
            raise InputError("no submitted annotation with a usable image" + (f" ({problems[0]})" if problems else ""))
        write_text_atomic(folder / "annotations.json", json.dumps(used))
        corrections = read_corrections(folder / "annotations.json")  # the reader finetune uses: bad tasks named now
        bad = list(corrections.problems)
        for key in corrections.entries:
            try:
                corrections.mask(key)  # decodes the brush RLE and checks every label is a class
            except InputError as e:
                bad.append(str(e))
        for p in bad:
            self.log(f"warning: {p} (left out of the round)")
        st.tasks = len(corrections.entries) - (len(bad) - len(corrections.problems))
        if st.tasks == 0:
            raise InputError("no usable annotation: " + bad[0])
        cfg = {"data": str(folder / "annotations.json"), "images": str(folder / "images"), "init": str(served.path),
               "out": str(folder / "run"), "epochs": self.recipe.epochs, "device": self.recipe.device,
               "threads": self.recipe.threads, "ignore_index": 255, "skip_bad": True, "save_every": self.recipe.epochs}
        if self.recipe.lr is not None:
            cfg["lr"] = self.recipe.lr
        if self.recipe.freeze_backbone:
            cfg["freeze_backbone"] = True
        write_text_atomic(folder / "config.json", json.dumps(cfg, indent=1))
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])),
                   **{PARENT_ENV: str(os.getpid())})
        self.log(f"training round {st.number}: {len(used)} annotated tasks, {self.recipe.epochs} epochs from "
                 f"{served.version}; log {folder / 'train.log'}")
        with open(folder / "train.log", "wb") as logf:
            with self._lock:
                if self._closed:
                    raise InputError("the backend is shutting down")
                self._child = subprocess.Popen([sys.executable, "-m", "fcn_label.serve.training", str(folder / "config.json")],
                                               stdout=logf, stderr=subprocess.STDOUT, env=env)
                st.pid = self._child.pid
            rc = self._child.wait()
        if rc != 0:
            tail = (folder / "train.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise InputError(f"fine-tuning exited with status {rc} ({tail[0][:300]}); still serving "
                             f"{served.version}; log {folder / 'train.log'}")
        return self.store.install(folder / "run" / "last.pt", st.number).version

    def wait(self, timeout: float | None = None) -> bool:
        """Until no round runs or waits (tests, shutdown); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                t = self._thread if (self.current or self._pending) else None
            if t is None:
                return True
            t.join(None if end is None else max(0.0, end - time.monotonic()))
            if end is not None and time.monotonic() >= end and t.is_alive():
                return False

    def close(self) -> None:
        """Stop: no new rounds; a running child is terminated (its weights are never installed)."""
        with self._lock:
            self._closed, self._pending = True, None
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def freeze_backbone(model) -> None:
    """Train only the layers above VGG's conv1-conv5, and keep every BatchNorm's statistics as they are.

    The idea: a few corrected images are too few to re-estimate BatchNorm statistics. Measured
    (docs, Label Studio page), it lost to training every layer at a lower learning rate, so rounds
    do not use it unless asked (``--train-freeze``)."""
    import types

    import torch

    for name, mod in model.named_children():
        if name.startswith(("conv", "bn")):
            for p in mod.parameters():
                p.requires_grad_(False)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()
            mod.train = types.MethodType(lambda self, mode=True: self, mod)  # model.train() leaves it in eval


def train_round(cfg_dict: dict, log=print, frozen: bool = False):
    """Fine-tune as ``cfg_dict`` says (its keys override the preset); ``frozen``: :func:`freeze_backbone`.
    Returns the Trainer (its ``ema`` or ``model`` is what it saved)."""
    from ..predict import pick_device
    from ..train import TrainConfig, Trainer, build

    cfg = TrainConfig(**cfg_dict)
    cfg.apply_preset(set(cfg_dict))
    cfg.validate()
    parts = None
    if frozen:
        import torch

        torch.manual_seed(cfg.seed)
        parts = build(cfg, pick_device(cfg.device), log)
        freeze_backbone(parts.model)
    trainer = Trainer(cfg, log=log, parts=parts)
    trainer.run()
    return trainer


def _die_with_parent() -> None:
    """A backend killed with SIGKILL cannot stop its child: on Linux the kernel does (PR_SET_PDEATHSIG),
    so no orphaned round keeps the machine busy for weights nobody will install."""
    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or not parent:
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the parent died before the call
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """The child: fine-tune as the round's config.json says (options given there override the preset)."""
    _die_with_parent()
    argv = sys.argv[1:] if argv is None else argv
    cfg_dict = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    frozen = bool(cfg_dict.pop("freeze_backbone", False))
    train_round(cfg_dict, log=lambda m: print(m, flush=True), frozen=frozen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
