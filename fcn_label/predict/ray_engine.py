"""``predict --engine ray``: the driver of one predict run on a Ray cluster (what runs on the nodes is
:mod:`.ray_stages`).

The job (:class:`.job.PredictJob`) still opens --out, skips finished images and writes the reports;
this runner only replaces the pipeline between them:

1. header pass: each image's size from its header, so the driver can put same-size images in the
   same batches, as the local engine's window does (a batch of one and a batch of several can differ
   in the last float bits, so the batches must match for the outputs to). The driver reads the
   headers of the local files it can see itself (a header is a few bytes: a Ray task per block costs
   more than the reads); objects in a store, and files only the workers see, are read by CPU tasks;
2. decode: one planned batch's files read and decoded behind the per-file guard (a file that fails
   becomes a failure event, never an exception);
3. the network (an actor pool: one GPU per actor where the cluster has GPUs and ``--device`` allows,
   else one-thread CPU actors, one per cluster CPU, spread over the nodes);
4. outputs: :meth:`.sink.Sink.try_write` into the shared --out, with the image records held back
   and sent to the driver;
5. the driver appends each record (only after its outputs exist, and only the driver: an image
   whose task Ray ran twice is counted once) and feeds the same tally and progress bar.

With GPUs, 2-4 run as a Ray Data pipeline: decode and outputs are CPU tasks around the GPU actors, so
that the GPUs never wait for the CPU work. On a CPU-only cluster the one-thread actors already take
every CPU, so each actor does 2-4 itself, as the local engine's inference processes do, and the driver
hands the actors their blocks itself (plain Ray actors; when a node dies, the driver gives the
unanswered blocks of its actors to new ones, :class:`ActorPool`): separate tasks would only compete
with the actors for the same cores and cost a worker process each (a torch import), and Ray Data
would add its own helper actors and scheduling, for a pipeline of one stage.

Resources are fractional so that no stage starves another: an actor pool holding every CPU of a
small cluster leaves the read and write tasks none, and the dataset never finishes. In the GPU
pipeline, tasks are retried and actors restarted when a node dies (Ray Data's defaults: without
limit, for system failures, the only kind left: every stage turns a file's error into an event); if
Ray (or the CPU actors' pool) still gives up, the run stops with what is done kept, and re-running
the same command finishes it.

The workers import fcn_label: it must be installed (the same version) wherever Ray runs them, and
--out and the inputs must be the same paths on every node (a shared folder), or an object store.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from ..guard import guarded
from ..images import image_size
from ..storage import is_url
from .discover import Item
from .options import RaySettings
from .pipeline import Parts
from .predictor import Predictor, batch_limit_on
from .ray_stages import NetRecipe, Network, WholeActor, decode_blocks, header_sizes, write_blocks
from .sink import Sink
from .tally import Outcome, Tally

RAY_MISSING = 'predict --engine ray needs Ray, which is not installed: pip install "fcn-label[ray]"'

# Ray resource shares. A network actor asks for ACTOR_CPUS and a decode or write task for TASK_CPUS,
# so that after a node is lost the actors restarted on the survivors still leave the tasks room.
ACTOR_CPUS = 0.25
TASK_CPUS = 0.25
# Batches queued at each network actor: enough to hide the hand-over, few enough to bound memory.
INFLIGHT_PER_ACTOR = 2
# Threads reading local headers on the driver (the reads wait on the disk or a shared folder, not the CPU).
HEADER_THREADS = 8
# Items per header-pass block; planned batches per block of the pipeline (each task and each actor call
# costs scheduling time, so a block carries several batches, unless that leaves workers idle); the most blocks.
HEADER_BLOCK = 256
BATCHES_PER_BLOCK = 8
MAX_BLOCKS = 20_000


# Ray's notices that say nothing to a predict user: the progress bars this run replaces with its own, the
# note that a local Ray instance uses token authentication (on by default), and
# Ray Data's own traceback of a failed dataset: the run says in one line why it stopped (:func:`reason`).
QUIET_LOGGERS = ("ray.data._internal.progress", "ray._private.authentication.authentication_token_setup",
                 "ray.data.exceptions")


def import_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


# -- connecting ------------------------------------------------------------------------------------
def _check_reachable(address: str, what: str) -> None:
    """Refuse an address nothing listens on in seconds (ray.init waits minutes before giving up)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"{what} {address}: expected HOST:PORT of a Ray head node, e.g. 10.0.0.5:6379") from None
    try:
        socket.create_connection((host or "127.0.0.1", port_n), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"{what} {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                          "`ray start --head` or fix the address") from None


def connect(settings: RaySettings):
    """``(ray, started)``: connected to --ray-address, else RAY_ADDRESS, else a new local Ray; ``started``
    is False when the caller had already connected (then it is the caller's to shut down)."""
    ray = import_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset run
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return ray, False
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    what = "--ray-address" if settings.address else "RAY_ADDRESS"
    if address:
        _check_reachable(address, what)
    try:
        # "local": a fresh instance, never a cluster some other `ray start` on this machine left behind
        ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False, **({} if address else {"include_dashboard": False}))
    except ConnectionError as e:
        where = f"{what} {address}" if address else "a local Ray"
        raise ConfigError(f"{where}: cannot connect ({reason(e)}); check that it is a Ray head node's address and, "
                          "where the cluster uses token authentication, that RAY_AUTH_TOKEN is its token") from None
    return ray, True


# -- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Where the network runs, how the work is split, and how many of each worker the cluster gets."""

    gpu: bool
    actors: int
    tasks: int  # most decode (and most write) tasks at once
    # the Ray Data pipeline (decode tasks, network actors, write tasks), else actors that do all three;
    # the pipeline where the network has GPUs (see the module's docstring)
    pipeline: bool = False

    @classmethod
    def for_cluster(cls, resources: dict, settings: RaySettings) -> "Plan":
        cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if settings.device.startswith("cuda") and gpus < 1:
            raise ConfigError(f"--device {settings.device}: the Ray cluster has no GPU; use --device auto or cpu")
        if settings.device != "cpu" and gpus >= 1:
            return cls(True, gpus, max(1, int(cpus) - gpus), pipeline=True)
        return cls(False, max(1, int(cpus)), max(1, int(cpus)))

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpu else "cpu"


def plan_batches(todo: Sequence[Item], sizes: dict[int, tuple[int, int]], predictor: Predictor, device_type: str,
                 batch_size: int | None) -> list[list[int]]:
    """The forward passes: same-size images in discovered order, in runs of the workers' batch limit; an image
    to tile, or one whose header could not be read, alone. Ordered by their first image."""
    groups: list[list[int]] = []
    by_shape: dict[tuple[int, int], list[int]] = {}
    for k in range(len(todo)):
        hw = sizes.get(k)
        if hw is None or predictor.needs_tiling(hw):
            groups.append([k])
        else:
            by_shape.setdefault(hw, []).append(k)
    for hw, ks in by_shape.items():
        n = batch_limit_on(device_type, hw, batch_size)
        groups.extend(ks[j : j + n] for j in range(0, len(ks), n))
    groups.sort(key=lambda g: g[0])
    return groups


# -- the driver ------------------------------------------------------------------------------------
def _cuda_available() -> bool:
    """On a GPU worker: whether its torch can use the GPU Ray gave it."""
    import torch

    return torch.cuda.is_available()


def root_cause(e: BaseException) -> BaseException:
    """The error a worker raised, out of the Ray errors that carry it (``cause``; a chained error only when it
    says something: Ray Data chains an empty SystemException to its own)."""
    for _ in range(16):
        inner = getattr(e, "cause", None)
        if not isinstance(inner, BaseException):
            inner = e.__cause__ if isinstance(e.__cause__, BaseException) and str(e.__cause__).strip() else None
        if inner is None:
            break
        e = inner
    return e


def reason(e: BaseException) -> str:
    """One line for ``e``: a Ray error that carries a worker's traceback ends with the line naming the error."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and re.match(r"^[A-Za-z_][\w.]*: ", lines[-1]):
        return lines[-1]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def run_ray(parts: Parts, todo: list[Item], tally: Tally, settings: RaySettings) -> None:
    """Predict ``todo`` on a Ray cluster, counting into ``tally`` as :func:`.runners.run_here` does."""
    ray, started = connect(settings)
    try:
        plan = Plan.for_cluster(ray.cluster_resources(), settings)
        if plan.gpu and not ray.get(ray.remote(num_gpus=1, num_cpus=0)(_cuda_available).remote()):
            raise ConfigError("the Ray cluster has GPUs, but torch on its GPU workers cannot use CUDA (a CPU-only "
                              "torch?); install a CUDA build of torch there, or add --device cpu")
        recipe = NetRecipe.of(ray, parts.infer.predictor, settings.amp)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the run's own bar counts images
        ctx.print_on_execution_start = False
        pool = None
        try:
            if not plan.pipeline:  # started now: they import torch and build the network while the driver plans
                pool = ActorPool(ray, parts, recipe, plan)
            sizes = read_headers(todo, parts.decode.max_pixels,
                                 lambda ks: _read_headers_on_workers(ray, todo, ks, parts.decode.max_pixels, plan))
            groups = plan_batches(todo, sizes, parts.infer.predictor, plan.device_type, parts.options.batch_size)
            if plan.pipeline:
                _run_pipeline(ray, parts, todo, groups, tally, plan, recipe)
            else:
                _run_on_actors(ray, pool, todo, groups, tally, parts.sink)
        except Exception as e:  # noqa: BLE001 - Ray gave up (a node lost too often...): keep what is done
            tally.stop(f"the Ray job failed ({reason(root_cause(e))}); re-run the same command to finish: finished "
                       "images are kept and skipped")
        finally:
            if pool is not None:
                pool.kill()
    finally:
        if started:
            ray.shutdown()


def _local_size(path, max_pixels: int) -> tuple[int, int] | None:
    """(height, width) of a file the driver sees; None when it cannot (an object, a file only the workers see)."""
    if is_url(path) or not os.path.exists(path):
        return None
    size, _ = guarded("", image_size, path, max_pixels)
    return (-1, -1) if size is None else (size[1], size[0])


def read_headers(todo: Sequence[Item], max_pixels: int, on_workers) -> dict[int, tuple[int, int]]:
    """(height, width) by index in ``todo``, for the images whose header could be read: here for the local files
    the driver sees, by ``on_workers(indices)`` (the same dict for those) for the others."""
    sizes: dict[int, tuple[int, int]] = {}
    elsewhere: list[int] = []
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        for k, hw in enumerate(pool.map(lambda it: _local_size(it.path, max_pixels), todo, chunksize=64)):
            if hw is None:
                elsewhere.append(k)
            elif hw[0] > 0:
                sizes[k] = hw
    if elsewhere:
        sizes.update(on_workers(elsewhere))
    return sizes


def _read_headers_on_workers(ray, todo: list[Item], ks: list[int], max_pixels: int,
                             plan: Plan) -> dict[int, tuple[int, int]]:
    rows = [{"k": k, "item": pickle.dumps(todo[k])} for k in ks]
    blocks = max(1, min(MAX_BLOCKS, -(-len(rows) // HEADER_BLOCK)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(header_sizes, fn_kwargs={"max_pixels": max_pixels}, batch_size=HEADER_BLOCK, num_cpus=TASK_CPUS,
                        compute=ray.data.TaskPoolStrategy(size=min(blocks, plan.tasks + plan.actors)))
    sizes: dict[int, tuple[int, int]] = {}
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, h, w in zip(b["k"].tolist(), b["h"].tolist(), b["w"].tolist()):
            if h > 0:
                sizes[k] = (h, w)
    return sizes


def _run_pipeline(ray, parts: Parts, todo: list[Item], groups: list[list[int]], tally: Tally, plan: Plan,
                  recipe: NetRecipe) -> None:
    """The pipeline (Ray Data): decode tasks, the network actors (one GPU each on a GPU plan), write tasks."""
    rows = [{"g": pickle.dumps([(k, todo[k]) for k in g])} for g in groups]
    # enough blocks for every worker to have two, else BATCHES_PER_BLOCK batches each
    blocks = max(1, min(len(rows), MAX_BLOCKS, max(2 * (plan.actors + plan.tasks), -(-len(rows) // BATCHES_PER_BLOCK))))
    tasks = ray.data.TaskPoolStrategy(size=min(blocks, plan.tasks))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(decode_blocks, fn_kwargs={"decode": parts.decode}, batch_size=1, num_cpus=TASK_CPUS, compute=tasks)
    ds = ds.map_batches(Network, fn_constructor_kwargs={"recipe": recipe, "gpu": plan.gpu,
                                                         "batch_size": parts.options.batch_size,
                                                         "overlay": parts.options.overlay},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(
                            size=plan.actors, max_tasks_in_flight_per_actor=INFLIGHT_PER_ACTOR),
                        **({"num_gpus": 1} if plan.gpu else {"num_cpus": ACTOR_CPUS}))
    ds = ds.map_batches(write_blocks, fn_kwargs={"sink": parts.sink}, batch_size=1, num_cpus=TASK_CPUS, compute=tasks)
    seen = bytearray(len(todo))
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for data in b["g"]:
            take(pickle.loads(data), todo, seen, parts.sink, tally)
        if tally.stopped:
            return
    _check_all_seen(todo, seen, tally)


class ActorPool:
    """The CPU actors, spread over the nodes, and their replacements: an actor whose node died is replaced
    by a new one (placed on a live node) that takes over its unanswered blocks. The driver does this rather
    than Ray's own actor restarts, which cannot promise a restart for an actor built from an object in the
    object store (the checkpoint; ray-project/ray#53727) and print an error line saying so for every actor.
    A block is retried on a new actor at most MAX_TRIES times: one that kills its actor every time (not a
    node's death, then) stops the run instead of looping."""

    MAX_TRIES = 4

    def __init__(self, ray, parts: Parts, recipe: NetRecipe, plan: Plan):
        self.ray = ray
        self.cls = ray.remote(num_cpus=ACTOR_CPUS, max_restarts=0, scheduling_strategy="SPREAD")(WholeActor)
        self.args = (recipe, parts.options.batch_size, parts.options.overlay, parts.decode, parts.sink)
        self.actors = [self.cls.remote(*self.args) for _ in range(plan.actors)]

    def replace(self, slot: int, dead) -> None:
        """A new actor in ``slot`` unless one already took the place of ``dead`` (each of its calls fails)."""
        if self.actors[slot] is dead:
            self.actors[slot] = self.cls.remote(*self.args)

    def kill(self) -> None:
        for a in self.actors:  # on a cluster the run did not start, they would outlive it
            self.ray.kill(a)


def _run_on_actors(ray, pool: ActorPool, todo: list[Item], groups: list[list[int]], tally: Tally,
                   sink: Sink) -> None:
    """The planned batches in blocks, each actor kept INFLIGHT_PER_ACTOR blocks ahead, the events taken in the
    order they come back. A block is BATCHES_PER_BLOCK batches while there are many left, and shrinks to one
    towards the end, so that no actor is left with a long block while the others have finished. A block
    whose actor died goes to that actor's replacement."""
    from ray.exceptions import RayActorError

    next_group = 0
    pending: dict = {}  # call -> (slot, actor, block, tries)

    def send(slot: int, block: list, tries: int) -> None:
        actor = pool.actors[slot]
        pending[actor.block.remote(block)] = (slot, actor, block, tries)

    def give(slot: int) -> None:
        nonlocal next_group
        left = len(groups) - next_group
        if left > 0:
            n = max(1, min(BATCHES_PER_BLOCK, left // (2 * INFLIGHT_PER_ACTOR * len(pool.actors))))
            send(slot, [[(k, todo[k]) for k in g] for g in groups[next_group : next_group + n]], 1)
            next_group += n

    for slot in range(len(pool.actors)):
        for _ in range(INFLIGHT_PER_ACTOR):
            give(slot)
    seen = bytearray(len(todo))
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        slot, actor, block, tries = pending.pop(ref)
        try:
            answer = ray.get(ref)
        except RayActorError as e:
            if e.actor_init_failed:  # not a node's death: the same error again on every new actor
                raise
            if tries >= ActorPool.MAX_TRIES:
                raise RuntimeError(f"a block of {sum(map(len, block))} images lost its actor {tries} times "
                                   f"({reason(e)})") from None
            pool.replace(slot, actor)
            send(slot, block, tries + 1)
            continue
        for events in answer:
            take(events, todo, seen, sink, tally)
        if tally.stopped:
            return
        give(slot)
    _check_all_seen(todo, seen, tally)


def _check_all_seen(todo: list[Item], seen: bytearray, tally: Tally) -> None:
    missing = len(todo) - sum(seen)
    if missing:  # never seen so far; said rather than left for the reports to leave out silently
        tally.stop(f"{missing} images did not come back from the Ray workers; re-run the same command to finish: "
                   "finished images are kept and skipped")


def take(events: list, todo: Sequence[Item], seen: bytearray, sink: Sink, tally: Tally) -> None:
    """The driver's part of a batch's events: each image's record appended (its outputs are in place) and
    counted, or its failure listed, once: ``seen`` marks the images already taken, so a second report of one
    (Ray reran the task that made it) changes nothing."""
    for ev in events:
        k = ev[1]
        if seen[k]:
            continue
        seen[k] = 1
        path = str(todo[k].path)
        if ev[0] == "failed":
            tally.fail(path, ev[2], ev[3])
            continue
        outcome, message, rec = Outcome(ev[2]), ev[3], ev[4]
        if outcome is Outcome.DONE:
            try:
                sink.append_record(rec)
            except OSError as e:  # --out takes no more: stop, keep what is done
                tally.stop(f"--out {sink.layout.out}: cannot append a record ({e.strerror or e}); make room "
                           "(or fix --out) and re-run the same command: finished images are kept and skipped")
                return
        tally.settle(path, outcome, message)
