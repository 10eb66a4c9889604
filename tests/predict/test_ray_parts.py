"""The Ray engine's parts that need no cluster: the batch plan against the local window's batches, the resource
plan, and the sink a worker gets (pickled, its records held for the driver). The engine on a real cluster:
tests/scale/test_ray_engine.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from fcn_label.errors import ConfigError
from fcn_label.predict import PredictJob, PredictOptions, Predictor, discover
from fcn_label.predict.discover import Item
from fcn_label.predict.options import RaySettings
from fcn_label.predict.predictor import Prediction
from fcn_label.predict.options import JobResult
from fcn_label.predict.ray_engine import Plan, plan_batches, read_headers, take
from fcn_label.storage import ObjectUrl
from fcn_label.predict.tally import Outcome, Tally
from support.helpers import make_checkpoint, rand_image


def _window_batches(shapes, predictor, batch_size=None):
    """The batches the local pipeline's window forms when it never overflows: per size, in order, runs of the
    batch limit; an image to tile alone (a plain loop, the reference)."""
    out, pending = [], {}
    for k, hw in enumerate(shapes):
        if predictor.needs_tiling(hw):
            out.append([k])
            continue
        pending.setdefault(hw, []).append(k)
        if len(pending[hw]) == predictor.batch_limit(hw, batch_size):
            out.append(pending.pop(hw))
    out.extend(pending.values())
    return sorted(out)


@pytest.mark.parametrize("batch_size", [None, 2, 5])
def test_the_plan_batches_same_size_images_as_the_local_window(batch_size):
    p = Predictor(make_checkpoint(), device="cpu", tile=64)
    rng = np.random.default_rng(0)
    choices = [(32, 48), (40, 56), (24, 64), (300, 20), (80, 90)]  # (80, 90) is tiled (tile 64)
    shapes = [choices[i] for i in rng.integers(0, len(choices), 70)]
    sizes = {k: hw for k, hw in enumerate(shapes)}
    todo = list(range(len(shapes)))
    got = plan_batches(todo, sizes, p, "cpu", batch_size)
    assert sorted(got) == _window_batches(shapes, p, batch_size)
    assert [g[0] for g in got] == sorted(g[0] for g in got)  # in discovered order of their first image
    # an image whose header could not be read goes alone (decode then says why)
    del sizes[3]
    got = plan_batches(todo, sizes, p, "cpu", batch_size)
    assert [3] in got and sorted(k for g in got for k in g) == todo


def test_the_plan_uses_the_workers_device_type_for_batch_limits():
    p = Predictor(make_checkpoint(), device="cpu")
    sizes = {k: (360, 480) for k in range(20)}
    assert {len(g) for g in plan_batches(list(range(20)), sizes, p, "cpu", None)} == {1}  # a CPU frame: alone
    assert sorted(len(g) for g in plan_batches(list(range(20)), sizes, p, "cuda", None)) == [4, 8, 8]  # a GPU: 8


def test_the_resource_plan():
    cpu2 = {"CPU": 2.0}
    assert Plan.for_cluster(cpu2, RaySettings()) == Plan(gpu=False, actors=2, tasks=2)
    assert Plan.for_cluster({"CPU": 16.0, "GPU": 2.0}, RaySettings()) == Plan(gpu=True, actors=2, tasks=14, pipeline=True)
    assert not Plan.for_cluster({"CPU": 16.0, "GPU": 2.0}, RaySettings(device="cpu")).gpu
    with pytest.raises(ConfigError, match="no GPU"):
        Plan.for_cluster(cpu2, RaySettings(device="cuda"))


def test_a_workers_sink_holds_its_records_for_the_driver(tmp_path):
    """Pickled (as Ray sends it), the sink writes the outputs under --out and keeps the record for the driver;
    only the driver's append puts it in the record store."""
    src = tmp_path / "in"
    src.mkdir()
    img = rand_image(20, 30, 0)
    Image.fromarray(img).save(src / "a.png")
    items, _ = discover([src])
    job = PredictJob(Predictor(make_checkpoint(), device="cpu"), PredictOptions(out=tmp_path / "out"))
    worker = pickle.loads(pickle.dumps(job.sink))
    held = worker.hold_records()
    pred = Prediction(np.zeros((20, 30), np.uint8), np.full((20, 30), 0.75, np.float32))
    assert worker.try_write(items[0], img, pred, 0.5) == (Outcome.DONE, "")
    assert (tmp_path / "out" / "a.png").is_file()
    assert len(held) == 1 and held[0]["file_name"] == "a.png" and held[0]["mean_confidence"] == 0.75
    records = tmp_path / "out" / ".fcn-label" / "records"
    assert not records.is_dir() or not list(records.glob("*.jsonl"))
    job.sink.append_record(held[0])
    job.sink.close()
    (seg,) = records.glob("*.jsonl")
    assert seg.read_text().count("\n") == 1


@pytest.mark.parametrize("extra,says", [
    (["--ray-address", "127.0.0.1:1"], "--ray-address applies to --engine ray"),
    (["--engine", "ray", "--parallel", "procs=2"], "drop --parallel"),
    (["--engine", "ray", "--backend", "bf16"], "drop --backend bf16"),
])
def test_options_the_ray_engine_cannot_honour_are_one_line(tmp_path, capsys, extra, says):
    if "--engine" in extra:
        pytest.importorskip("ray", reason='the Ray engine needs Ray: pip install "fcn-label[ray]"')
    from fcn_label.cli import run_cli

    (tmp_path / "in").mkdir()
    Image.fromarray(rand_image(8, 8, 0)).save(tmp_path / "in" / "a.png")
    with pytest.raises(SystemExit) as e:
        run_cli(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_driver_counts_an_image_reported_twice_once(tmp_path):
    """Ray reruns a task whose node died after it ran: its images come back twice. The driver appends one
    record and counts one image (a plain count of distinct images is the reference)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(rand_image(20, 30, 0)).save(src / f"{name}.png")
    todo, _ = discover([src])
    job = PredictJob(Predictor(make_checkpoint(), device="cpu"), PredictOptions(out=tmp_path / "out"))
    rec = {"path": str(todo[0].path), "file_name": "a.png", "width": 30, "height": 20, "seconds": 0.1, "classes": {},
           "mean_confidence": 0.5, "low_confidence_fraction": 0.0}
    done, failed = ("written", 0, "done", "", rec), ("failed", 1, "decode", f"{todo[1].path}: broken")
    res = JobResult(total=3)
    tally = Tally(res, record=job.sink.record_failure)
    seen = bytearray(3)
    take([done, failed], todo, seen, job.sink, tally)
    take([failed, done], todo, seen, job.sink, tally)  # the rerun task's report
    job.sink.close()
    assert (res.done, [f.path for f in res.failed]) == (1, [str(todo[1].path)])
    lines = [ln for seg in (tmp_path / "out" / ".fcn-label" / "records").glob("*.jsonl")
             for ln in seg.read_text().splitlines()]
    assert len(lines) == 1
    assert list(seen) == [1, 1, 0]


def test_the_driver_reads_the_headers_it_sees_and_leaves_the_rest_to_the_workers(tmp_path):
    shapes = [(30, 40), (17, 23), (30, 40)]
    todo = []
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(rand_image(h, w, i)).save(tmp_path / f"{i}.png")
        todo.append(Item(tmp_path / f"{i}.png", str(i)))
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    todo.append(Item(tmp_path / "broken.png", "broken"))  # unreadable here and on a worker: unknown
    todo.append(Item(tmp_path / "only-on-the-workers.png", "gone"))  # not on the driver's disk
    todo.append(Item(ObjectUrl("s3://bucket/a.png"), "a"))
    asked = []

    def on_workers(ks):
        asked.append(list(ks))
        return {k: (5, 6) for k in ks}

    sizes = read_headers(todo, 10**8, on_workers)
    pil = {}  # the reference: PIL's (width, height) of each file
    for k in range(3):
        with Image.open(todo[k].path) as im:
            pil[k] = (im.size[1], im.size[0])
    assert asked == [[4, 5]]
    assert sizes == {**pil, 4: (5, 6), 5: (5, 6)}
    assert read_headers(todo[:3], 10**8, lambda ks: pytest.fail("nothing to ask the workers")) == pil
