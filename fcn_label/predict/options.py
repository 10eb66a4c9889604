"""What a predict job is asked to do (PredictOptions) and what it reports back (JobResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..guard import Failure
from ..images import DEFAULT_MAX_PIXELS
from ..predfolder.layout import Palette


@dataclass(frozen=True)
class RaySettings:
    """``--engine ray``: which cluster, and what its inference workers run on (the driver runs no network)."""

    address: str | None = None  # --ray-address; None: RAY_ADDRESS, else a local Ray that this run starts
    device: str = "auto"  # --device for the workers: auto = one GPU each where the cluster has GPUs, else CPU
    amp: bool = False  # --amp, on GPU workers


@dataclass
class PredictOptions:
    out: Path
    batch_size: int | None = None  # None: the predictor's default for its device
    workers: int | None = None  # decoding processes; None: parallel.default_workers()
    palette: Palette | str = Palette.model
    coco: bool = True
    overlay: bool = False
    probs: bool = False
    gt: Path | None = None
    ignore_index: int | None = None
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    max_pixels: int = DEFAULT_MAX_PIXELS
    low_confidence: float = 0.5
    # Processes encoding the outputs (mask PNG, RLE, record line), each appending to its own record
    # segment; 0 = two threads of the main process (GIL-bound). None: parallel.default_encoders().
    encoders: int | None = None
    # CPU: forked processes, each a whole pipeline (decoding, a one-thread network, outputs) on every
    # procs-th image; 1 = this process only. None: parallel.default_procs().
    procs: int | None = None
    # Where plain JPEGs are decoded, in batches by torchvision (--gpu-jpeg: the CUDA device, nvJPEG);
    # None: by Pillow in the decoding workers, like every other file.
    jpeg_device: str | None = None
    # --engine ray: the job as a Ray Data pipeline on a Ray cluster (:mod:`.ray_engine`); None: this machine
    ray: RaySettings | None = None


@dataclass
class JobResult:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)  # (path, stage, reason), as failures.csv lists them
    seconds: float = 0.0
    stopped: str = ""  # why the job stopped before the end (disk full...); empty when it ran through

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0
