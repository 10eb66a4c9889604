"""fcn-label select: each strategy against a computation made here from the files predict wrote."""

import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fcn_label.datasets.listfile import pairs_from_list
from fcn_label.predict import discover
from fcn_label.predfolder import read_report
from fcn_label.selection import select, write_selection

from support.select_pool import predict_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return predict_pool(tmp_path_factory.mktemp("select"))


def doubt_table(pred: Path) -> pd.DataFrame:
    """Per image: doubt and low fraction from the confidence PNGs, read with PIL and NumPy."""
    df = pd.read_csv(pred / "predictions.csv")
    d, lo = [], []
    for m in df["mask"]:
        c = np.array(Image.open(pred / "confidence" / m), dtype=np.float64) / 255.0
        d.append(1 - c.mean())
        lo.append((c < 0.5).mean())
    df["doubt"], df["low"] = d, lo
    df["name"] = [Path(p).name for p in df["path"]]
    return df


def names(choices):
    return [Path(c.row.input).name for c in choices]


def test_uncertainty_is_most_doubtful_first(pool):
    df = doubt_table(pool).sort_values(["doubt", "low", "name"], ascending=[False, False, True])
    got, problems = select(read_report(pool), 5, "uncertainty")
    assert not problems
    assert names(got) == list(df["name"][:5])
    # the maps agree with predict's full-precision mean confidence to 8-bit precision
    csv = pd.read_csv(pool / "predictions.csv").set_index("mask")
    for c in got:
        assert abs((1 - c.doubt) - csv.loc[c.row.rel + ".png", "mean_confidence"]) < 1 / 255


def test_without_confidence_maps_uses_predictions_csv(tmp_path):
    pred = predict_pool(tmp_path, n=8, probs=False)
    df = pd.read_csv(pred / "predictions.csv")
    df["name"] = [Path(p).name for p in df["path"]]
    df = df.sort_values(["mean_confidence", "low_confidence_fraction", "name"], ascending=[True, False, True])
    got, _ = select(read_report(pred), 8, "uncertainty")
    assert names(got) == list(df["name"])
    assert {c.source for c in got} == {"predictions.csv"}


def test_ties_are_broken_by_path_whatever_the_csv_order(tmp_path, pool):
    pred = tmp_path / "pred"
    shutil.copytree(pool, pred)
    conf = sorted((pred / "confidence").glob("*.png"))
    for p in conf[1:6]:  # five images with the very same confidence map: a five-way tie
        shutil.copy(conf[0], p)
    csv = pred / "predictions.csv"
    lines = csv.read_text().splitlines()
    folder = read_report(pred)
    first = names(select(folder, 14, "uncertainty")[0])
    tied = [Path(l.split(",")[0]).name for l in lines[1:] if Path(l.split(",")[1]).stem in {p.stem for p in conf[:6]}]
    assert len(tied) == 6
    pos = [first.index(n) for n in sorted(tied)]
    assert pos == list(range(pos[0], pos[0] + 6))  # adjacent, in path order
    before = {s: names(select(folder, 14, s, seed=3)[0]) for s in ("uncertainty", "diverse", "random")}
    body = lines[1:]
    random.Random(1).shuffle(body)
    csv.write_text("\n".join([lines[0]] + body) + "\n")
    after = {s: names(select(read_report(pred), 14, s, seed=3)[0]) for s in ("uncertainty", "diverse", "random")}
    assert after == before


def test_k_larger_than_the_pool_takes_every_image_once(pool):
    n = len(pd.read_csv(pool / "predictions.csv"))
    for strategy in ("uncertainty", "diverse", "random"):
        got = names(select(read_report(pool), 100, strategy)[0])
        assert sorted(got) == sorted(set(got)) and len(got) == n, strategy
    with pytest.raises(ValueError, match="positive"):
        select(read_report(pool), 0)
    with pytest.raises(ValueError, match="choose uncertainty, diverse, random"):
        select(read_report(pool), 3, "entropy")


def test_random_is_seeded(pool):
    all_names = sorted(Path(p).name for p in pd.read_csv(pool / "predictions.csv")["path"])
    a = names(select(read_report(pool), 6, "random", seed=5)[0])
    assert a == names(select(read_report(pool), 6, "random", seed=5)[0])
    assert a != names(select(read_report(pool), 6, "random", seed=6)[0])
    assert a == random.Random(5).sample(all_names, 6)  # documented: a sample of the pool sorted by path


def diverse_reference(df: pd.DataFrame, k: int, diversity: float = 1.0, min_fraction: float = 0.001) -> list[str]:
    """The documented greedy rule, restated over the pandas table (classes parsed from the CSV text)."""
    shows = [{kv.rsplit(":", 1)[0] for kv in str(s).split(";") if float(kv.rsplit(":", 1)[1]) >= min_fraction}
             for s in df["classes"]]
    n = len(df)
    freq = pd.Series([c for s in shows for c in s]).value_counts()
    rarity = {c: math.log(n / f) / math.log(n) for c, f in freq.items()}
    dmax = df["doubt"].max()
    taken, out, covered = set(), [], {c: 0 for c in rarity}
    for _ in range(min(k, n)):
        best = None
        for i in range(n):
            if i in taken:
                continue
            g = df["doubt"].iloc[i] / dmax + diversity * sum(rarity[c] / (1 + covered[c]) for c in shows[i])
            key = (g, df["doubt"].iloc[i], [-ord(ch) for ch in df["name"].iloc[i]])
            if best is None or key > best[0]:
                best = (key, i)
        i = best[1]
        taken.add(i)
        out.append(df["name"].iloc[i])
        for c in shows[i]:
            covered[c] += 1
    return out


def test_diverse_matches_the_greedy_rule_and_reaches_a_rare_class(tmp_path, pool):
    pred = tmp_path / "pred"
    shutil.copytree(pool, pred)
    df = doubt_table(pred)
    # make class4 rare: only the most confident image shows it (edit predict's CSV as a user could)
    calm = df.sort_values("doubt").index[0]
    df["classes"] = [";".join(kv for kv in s.split(";") if not kv.startswith("class4:")) for s in df["classes"]]
    df.loc[calm, "classes"] = df.loc[calm, "classes"] + ";class4:0.0500"
    df.drop(columns=["doubt", "low", "name"]).to_csv(pred / "predictions.csv", index=False)
    df = doubt_table(pred)
    calm_name = df["name"][calm]
    unc = names(select(read_report(pred), 4, "uncertainty")[0])
    div = names(select(read_report(pred), 4, "diverse")[0])
    assert calm_name not in unc and calm_name in div
    assert div == diverse_reference(df, 4)
    assert names(select(read_report(pred), 4, "diverse", diversity=0.0)[0]) == unc
    assert names(select(read_report(pred), 14, "diverse", diversity=2.5)[0]) == diverse_reference(df, 14, 2.5)


def test_list_file_is_read_by_predict_and_finetune(pool, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    choices, problems = write_selection(pool, "next.txt", 4)
    assert not problems
    lines = Path("next.txt").read_text().splitlines()
    assert len(lines) == 4 and all(not os.path.isabs(l) and Path(l).is_file() for l in lines)  # relative to here
    items, bad = discover(["next.txt"])
    assert not bad and [it.path.name for it in items] == names(choices)  # predict (and export --only) read it
    # a list written elsewhere holds absolute paths, so either way of resolving finds the files
    write_selection(pool, tmp_path / "lists" / "next.txt", 4)
    assert all(os.path.isabs(l) and Path(l).is_file() for l in (tmp_path / "lists" / "next.txt").read_text().splitlines())
    # with --masks: 'image mask' lines that finetune's list layout reads
    write_selection(pool, "train_next.txt", 4, masks=pool)
    pairs, bad = pairs_from_list(Path("train_next.txt"))
    assert not bad and [p.image.name for p in pairs] == names(choices)
    assert all(p.mask.parent.resolve() == pool.resolve() for p in pairs)
    assert sorted(p.name for p in work.iterdir()) == ["next.txt", "train_next.txt"]  # nothing else written


def _cli(args):
    from fcn_label.cli import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(args)
    return e.value.code or 0


def test_cli_select(pool, tmp_path, capsys):
    out = tmp_path / "next.txt"
    assert _cli(["select", str(pool), "--k", "3", "--out", str(out), "--strategy", "diverse"]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert _cli(["select", str(pool), "--k", "3", "--out", str(out), "--strategy", "margin"]) == 2
    err = capsys.readouterr().err
    assert "choose uncertainty, diverse, random" in err and "Traceback" not in err
    assert _cli(["select", str(tmp_path), "--k", "3", "--out", str(out)]) == 2
    assert "predictions.csv" in capsys.readouterr().err


def test_cli_select_exit_1_when_a_mask_is_missing(pool, tmp_path, capsys):
    masks = tmp_path / "masks"
    shutil.copytree(pool, masks, ignore=shutil.ignore_patterns("confidence", ".fcn-label", "*.csv", "*.json"))
    top = select(read_report(pool), 1, "uncertainty")[0][0]
    (masks / f"{top.row.rel}.png").unlink()
    out = tmp_path / "pairs.txt"
    assert _cli(["select", str(pool), "--k", "3", "--out", str(out), "--masks", str(masks)]) == 1
    err = capsys.readouterr().err
    assert f"no mask for {top.row.input}" in err.replace("\n", "")
    assert len(out.read_text().splitlines()) == 2
