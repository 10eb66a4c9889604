"""The review page: ``index.html`` plus thumbnails under one --out folder, nothing else.

The page is one self-contained file (inline CSS, JavaScript and data; no server, no
CDN), so it opens from disk and offline. Rows are rendered by the page a page at a
time from an embedded JSON list, which keeps the DOM small at 10,000 images, and
thumbnails load lazily. Thumbnails are written atomically and reused by a re-run
when they are newer than their source.
"""

from __future__ import annotations

import html
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import atomic_path, read_image, read_mask
from ..predfolder.outputs import flat_palette
from ..predfolder.reader import Report, Row, read_report

SORTS = {
    "confidence": "lowest mean confidence first",
    "low": "largest low-confidence fraction first",
    "iou": "lowest mean IoU against ground truth first",
    "name": "by input path",
}
THUMBS = "thumbs"


@dataclass
class ReviewResult:
    index: Path
    images: int
    thumbs_written: int = 0
    thumbs_reused: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """The page's default order (the page sorts the same way in JavaScript); ties by path."""
    if key == "confidence":
        return sorted(rows, key=lambda r: (r["mean_confidence"], r["path"]))
    if key == "low":
        return sorted(rows, key=lambda r: (-r["low_confidence_fraction"], r["path"]))
    if key == "iou":
        return sorted(rows, key=lambda r: (r["mean_iou"] is None, r["mean_iou"] or 0.0, r["path"]))
    if key == "name":
        return sorted(rows, key=lambda r: r["path"])
    raise ValueError(f"unknown sort {key!r}; choose {', '.join(SORTS)}")


# ---------------------------------------------------------------------------
# Thumbnails


def _fresh(dst: Path, *sources: Path | None) -> bool:
    """``dst`` exists and is at least as new as every source: a re-run keeps it."""
    try:
        t = dst.stat().st_mtime
    except OSError:
        return False
    return all(s is None or s.stat().st_mtime <= t for s in sources)


def _save(im: Image.Image, dst: Path, root: Path) -> None:
    real, top = dst.parent.resolve(), root.resolve()
    if real != top and top not in real.parents:
        raise InputError(f"{dst}: would be written outside --out {root} (through a symbolic link); remove the link")
    with atomic_path(dst) as tmp:
        im.save(tmp, format="JPEG", quality=82)


def _fit(im: Image.Image, size: int, resample=Image.BILINEAR) -> Image.Image:
    im = im.copy()
    im.thumbnail((size, size), resample)
    return im


# ---------------------------------------------------------------------------


def build_review(pred_dir: str | os.PathLike, out: str | os.PathLike, gt: str | os.PathLike | None = None,
                 images: str | os.PathLike | None = None, sort: str | None = None, thumb_size: int = 480,
                 ignore_index: int = 255, workers: int = 2, title: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> ReviewResult:
    """Write ``out/index.html`` and ``out/thumbs/`` for predict's output folder ``pred_dir``."""
    t0 = time.perf_counter()
    folder = read_report(pred_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; choose another --out")
    if sort is not None and sort not in SORTS:
        raise ValueError(f"--sort {sort!r}: choose {', '.join(SORTS)}")
    gt = Path(gt) if gt is not None else None
    if gt is not None and not gt.is_dir():
        raise InputError(f"--gt {gt}: folder not found; give the folder of ground-truth index masks named like the "
                         "predicted masks")
    if gt is not None and not folder.class_order_known:
        raise InputError(f"{folder.layout.predictions_json}: needed with --gt for the class order; re-run "
                         "predict without --no-coco")
    images = Path(images) if images is not None else None
    if images is not None and not images.is_dir():
        raise InputError(f"--images {images}: folder not found; give the folder predict read the images from")
    out.mkdir(parents=True, exist_ok=True)
    res = ReviewResult(out / "index.html", len(folder.rows), problems=list(folder.problems))
    palette = _palette(folder)

    def one(row: Row) -> dict:
        d = {"path": row.rel_input, "input": row.input, "rel": row.rel, "w": row.width, "h": row.height,
             "mean_confidence": row.mean_confidence, "low_confidence_fraction": row.low_confidence_fraction,
             "mean_iou": row.mean_iou, "classes": sorted(row.classes, key=lambda c: -row.classes[c]),
             "fractions": [round(row.classes[c], 4) for c in sorted(row.classes, key=lambda c: -row.classes[c])],
             "photo": None, "overlay": None, "conf": None, "note": ""}
        try:  # one boundary per image: whatever goes wrong, the row stays with a note and the batch goes on
            if gt is not None and d["mean_iou"] is None:
                d["mean_iou"] = _iou(folder, row, gt, ignore_index)
            _thumbs(folder, row, d, out, images, thumb_size, res)
        except Exception as e:
            msg = str(e) if isinstance(e, InputError) else f"{row.rel}: {type(e).__name__}: {e}"
            d["note"] = msg
            res.problems.append(msg)
        return d

    data = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, d in enumerate(pool.map(one, folder.rows), 1):
            data.append(d)
            if progress:
                progress(i, len(folder.rows))
    has_iou = any(d["mean_iou"] is not None for d in data)
    sort = sort or ("iou" if has_iou else "confidence")
    write_page(out, data, folder.class_names, palette, sort=sort, has_confidence=folder.has_confidence,
               title=title or f"fcn-label review: {folder.root}", source=str(folder.root))
    res.seconds = time.perf_counter() - t0
    return res


def _palette(folder: Report) -> dict[str, list[int]]:
    """Class name -> colour, from the palette of the first palette mask (predict's colours)."""
    if not folder.class_order_known:
        return {}
    for row in folder.rows[:20]:
        try:
            with Image.open(folder.mask(row)) as im:
                if im.mode == "P":
                    pal = im.getpalette() or []
                    return {n: pal[3 * i: 3 * i + 3] for i, n in enumerate(folder.class_names) if len(pal) >= 3 * i + 3}
        except Exception:
            continue
    return {}


def _iou(folder: Report, row: Row, gt: Path, ignore_index: int) -> float | None:
    from ..metrics import confusion_matrix, scores

    for ext in (".png", ".bmp", ".tif", ".tiff"):
        p = gt / f"{row.rel}{ext}"
        if p.is_file():
            break
    else:
        raise InputError(f"{gt / (row.rel + '.png')}: no ground truth for {row.rel}; IoU left empty")
    g, m = read_mask(p), read_mask(folder.mask(row))
    if g.shape != m.shape:
        raise InputError(f"{p}: ground truth is {g.shape[1]}x{g.shape[0]}, mask {m.shape[1]}x{m.shape[0]}; IoU left empty")
    v = scores(confusion_matrix(g, m, len(folder.class_names), ignore_index)).mean_iou
    return None if np.isnan(v) else round(float(v), 6)


def _thumbs(folder: Report, row: Row, d: dict, out: Path, images: Path | None, size: int,
            res: ReviewResult) -> None:
    base = out / THUMBS / row.rel
    rel = quote(f"{THUMBS}/{row.rel}", safe="/")  # a URL: '#', '?', '%' and spaces in names must not cut it
    notes = []
    mask_path = folder.mask(row)
    photo_src = folder.find_photo(row, images)
    overlay_src = folder.overlay(row)
    conf_src = folder.confidence(row)

    def make(dst: Path, sources: tuple, build: Callable[[], Image.Image]) -> None:
        if _fresh(dst, *sources):
            res.thumbs_reused += 1
            return
        _save(build(), dst, out)
        res.thumbs_written += 1

    photo = None
    if photo_src is not None:
        dst = Path(f"{base}.photo.jpg")

        def build_photo() -> Image.Image:
            nonlocal photo
            photo = _fit(Image.fromarray(read_image(photo_src)), size)
            return photo
        make(dst, (photo_src,), build_photo)
        d["photo"] = f"{rel}.photo.jpg"
    else:
        notes.append(f"photo not found at {row.input}; pass --images ROOT (the folder given to predict)")

    dst = Path(f"{base}.overlay.jpg")
    if overlay_src is not None:
        make(dst, (overlay_src,), lambda: _fit(Image.open(overlay_src).convert("RGB"), size))
    else:
        def build_overlay() -> Image.Image:
            with Image.open(mask_path) as m:
                m.load()
                if m.mode != "P":  # predict --palette none: plain index PNG, coloured here with the VOC map
                    m = Image.fromarray(np.asarray(m.convert("L")), mode="P")
                    m.putpalette(flat_palette(None))
                colours = m.convert("RGB")
            if photo_src is None:
                return _fit(colours, size, Image.NEAREST)
            ph = photo if photo is not None else _fit(Image.fromarray(read_image(photo_src)), size)
            col = colours.resize(ph.size, Image.NEAREST)
            return Image.blend(ph.convert("RGB"), col, 0.5)
        make(dst, (mask_path, photo_src), build_overlay)
    d["overlay"] = f"{rel}.overlay.jpg"

    if conf_src is not None:
        make(Path(f"{base}.conf.jpg"), (conf_src,), lambda: _fit(Image.open(conf_src).convert("L"), size))
        d["conf"] = f"{rel}.conf.jpg"
    d["note"] = "; ".join(notes)


# ---------------------------------------------------------------------------
# The page


def _json_for_script(obj) -> str:
    """JSON safe inside <script>: no '</' can end the element early."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def class_shares(data: list[dict], names: list[str]) -> list[tuple[str, float, int]]:
    """(class, share of all predicted pixels, images containing it), largest share first."""
    pix = {n: 0.0 for n in names}
    imgs = {n: 0 for n in names}
    total = 0.0
    for d in data:
        area = d["w"] * d["h"]
        total += area
        for c, f in zip(d["classes"], d["fractions"]):
            pix[c] = pix.get(c, 0.0) + f * area
            imgs[c] = imgs.get(c, 0) + 1
    return sorted(((c, pix[c] / total if total else 0.0, imgs[c]) for c in pix), key=lambda t: (-t[1], t[0]))


def write_page(out: Path, data: list[dict], class_names: list[str], palette: dict[str, list[int]], sort: str,
               has_confidence: bool, title: str, source: str = "", per_page: int = 100) -> Path:
    """index.html for ``data`` (one dict per image, as :func:`build_review` makes them), written atomically."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; choose {', '.join(SORTS)}")
    has_iou = any(d.get("mean_iou") is not None for d in data)
    shares = class_shares(data, class_names)
    rows = sort_rows(data, sort)
    sw = lambda c: ("#%02x%02x%02x" % tuple(palette[c])) if c in palette else "#888"  # noqa: E731
    top = max((s for _, s, _ in shares), default=0.0) or 1.0
    summary = "".join(
        f'<tr><td><span class="sw" style="background:{sw(c)}"></span>{html.escape(c)}</td>'
        f'<td class="num">{100 * s:.2f}%</td><td class="num">{n:,}</td>'
        f'<td><div class="bar" style="width:{100 * s / top:.1f}%;background:{sw(c)}"></div></td></tr>'
        for c, s, n in shares)
    sort_opts = "".join(f'<option value="{k}"{" selected" if k == sort else ""}{"" if k != "iou" or has_iou else " disabled"}>'
                        f'{html.escape(v)}{"" if k != "iou" or has_iou else " (needs --gt)"}</option>'
                        for k, v in SORTS.items())
    class_opts = '<option value="">all classes</option>' + "".join(
        f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c, _, n in shares if n)
    banner = "" if has_confidence else (
        '<p class="warn" id="noconf">No confidence maps in this predict folder: run <code>fcn-label predict ... '
        '--probs</code> to add them (a re-run with --probs --overwrite redoes the images).</p>')
    payload = {"rows": rows, "palette": {c: sw(c) for c in class_names}, "hasConfidence": has_confidence,
               "perPage": per_page}
    page = (_TEMPLATE.replace("%TITLE%", html.escape(title))
            .replace("%SOURCE%", html.escape(source))
            .replace("%N%", f"{len(data):,}")
            .replace("%SUMMARY%", summary)
            .replace("%SORT_OPTIONS%", sort_opts)
            .replace("%CLASS_OPTIONS%", class_opts)
            .replace("%BANNER%", banner)
            .replace("%DATA%", _json_for_script(payload)))
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return index


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 16px;background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:2}
h1{font-size:17px;margin:0 0 6px}
.controls label{margin-right:14px}
.controls select,.controls button{font:inherit}
main{display:flex;gap:16px;padding:12px 16px;align-items:flex-start}
#rows{flex:1;min-width:0}
aside{width:300px;flex:none;background:#fff;border:1px solid #ddd;padding:8px;position:sticky;top:90px}
aside table{border-collapse:collapse;width:100%;font-size:12px}
aside td{padding:1px 4px}
aside td:last-child{width:30%}
.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;border:1px solid #0003}
.bar{height:8px;min-width:1px}
.row{display:flex;gap:8px;background:#fff;border:1px solid #ddd;margin-bottom:8px;padding:6px}
.meta{width:210px;flex:none;font-size:12px;word-break:break-all}
.meta b{font-size:13px}
.chip{display:inline-block;padding:0 4px;margin:1px;border-radius:3px;color:#fff;text-shadow:0 0 2px #000;font-size:11px}
figure{margin:0;flex:1;min-width:0}
figure img{width:100%;max-width:320px;display:block;cursor:zoom-in;background:#eee;min-height:40px}
figcaption{font-size:11px;color:#666}
.missing{font-size:12px;color:#a40;background:#fff4ec;padding:6px;max-width:320px}
.warn{background:#fff4ec;color:#a40;padding:6px;margin:6px 0 0}
#pager{margin:8px 0}
#lightbox{position:fixed;inset:0;background:#000d;display:none;z-index:9;align-items:center;justify-content:center;flex-direction:column;cursor:zoom-out}
#lightbox.open{display:flex}
#lightbox img{max-width:96vw;max-height:88vh;image-rendering:auto;background:#fff}
#lightbox p{color:#fff;margin:6px}
</style></head>
<body>
<header>
<h1>%TITLE%</h1>
<div class="controls">
<label>Sort <select id="sort">%SORT_OPTIONS%</select></label>
<label>Class <select id="cls">%CLASS_OPTIONS%</select></label>
<label>Per page <select id="per"><option>50</option><option selected>100</option><option>250</option><option>1000</option><option value="0">all</option></select></label>
<span id="count"></span>
</div>
%BANNER%
</header>
<main>
<div id="rows-wrap"><div id="pager"></div><div id="rows"></div><div id="pager2"></div></div>
<aside><b>Class pixel shares</b> (%N% images)<table id="summary"><tr><th>class</th><th>pixels</th><th>images</th><th></th></tr>%SUMMARY%</table>
<p style="font-size:11px;color:#666">Confidence maps: white = certain, dark = doubtful. Click a picture to enlarge it; Esc closes.</p></aside>
</main>
<div id="lightbox" role="dialog"><img id="lb-img" alt=""><p id="lb-cap"></p></div>
<script type="application/json" id="data">%DATA%</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const all = D.rows;
  const $ = (id) => document.getElementById(id);
  const sortSel = $("sort"), clsSel = $("cls"), perSel = $("per");
  let page = 0, view = all;
  const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  const keys = {
    confidence: (a, b) => cmp(a.mean_confidence, b.mean_confidence) || cmp(a.path, b.path),
    low: (a, b) => cmp(b.low_confidence_fraction, a.low_confidence_fraction) || cmp(a.path, b.path),
    iou: (a, b) => cmp(a.mean_iou === null, b.mean_iou === null) || cmp(a.mean_iou || 0, b.mean_iou || 0) || cmp(a.path, b.path),
    name: (a, b) => cmp(a.path, b.path),
  };
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fig(src, caption, missing) {
    const f = el("figure");
    if (src) {
      const img = el("img", {src: src, loading: "lazy", alt: caption, decoding: "async"});
      img.addEventListener("click", () => enlarge(src, caption));
      f.appendChild(img);
    } else {
      f.appendChild(el("div", {class: "missing"}, missing));
    }
    f.appendChild(el("figcaption", {}, caption));
    return f;
  }
  function row(r, rank) {
    const d = el("div", {class: "row", "data-path": r.path, "data-mean-confidence": String(r.mean_confidence),
      "data-low-confidence-fraction": String(r.low_confidence_fraction),
      "data-mean-iou": r.mean_iou === null ? "" : String(r.mean_iou), "data-classes": r.classes.join("\n")});
    const m = el("div", {class: "meta"});
    m.appendChild(el("b", {}, "#" + rank + " " + r.path));
    m.appendChild(el("div", {}, "mean confidence " + r.mean_confidence.toFixed(3) + ", low-confidence pixels " +
      (100 * r.low_confidence_fraction).toFixed(1) + "%" + (r.mean_iou === null ? "" : ", mean IoU " + (100 * r.mean_iou).toFixed(1))));
    m.appendChild(el("div", {}, r.w + "\u00d7" + r.h));
    const chips = el("div");
    r.classes.forEach((c, i) => { const s = el("span", {class: "chip", title: c}, c + " " + (100 * r.fractions[i]).toFixed(1) + "%"); s.style.background = D.palette[c] || "#888"; chips.appendChild(s); });
    m.appendChild(chips);
    if (r.note) m.appendChild(el("div", {class: "missing"}, r.note));
    d.appendChild(m);
    d.appendChild(fig(r.photo, "photo: " + r.path, "photo not found; pass --images ROOT to fcn-label review"));
    d.appendChild(fig(r.overlay, "predicted mask (overlay)", "no mask picture"));
    d.appendChild(fig(r.conf, "confidence map", D.hasConfidence ? "no confidence map for this image" : "no confidence map: run fcn-label predict with --probs"));
    return d;
  }
  function enlarge(src, caption) {
    $("lb-img").src = src; $("lb-cap").textContent = caption; $("lightbox").classList.add("open");
  }
  $("lightbox").addEventListener("click", () => $("lightbox").classList.remove("open"));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("lightbox").classList.remove("open"); });
  function pager(target, pages) {
    target.textContent = "";
    if (pages <= 1) return;
    const prev = el("button", {type: "button", class: "prev"}, "\u2190 previous"), next = el("button", {type: "button", class: "next"}, "next \u2192");
    prev.disabled = page === 0; next.disabled = page >= pages - 1;
    prev.onclick = () => { page--; render(); window.scrollTo(0, 0); };
    next.onclick = () => { page++; render(); window.scrollTo(0, 0); };
    target.append(prev, " page " + (page + 1) + " of " + pages + " ", next);
  }
  function render() {
    const per = parseInt(perSel.value, 10) || view.length || 1;
    const pages = Math.max(1, Math.ceil(view.length / per));
    page = Math.min(page, pages - 1);
    const start = page * per, slice = view.slice(start, start + per);
    const box = $("rows"), frag = document.createDocumentFragment();
    slice.forEach((r, i) => frag.appendChild(row(r, start + i + 1)));
    box.textContent = ""; box.appendChild(frag);
    pager($("pager"), pages); pager($("pager2"), pages);
    $("count").textContent = view.length ? ("showing " + (start + 1) + "\u2013" + (start + slice.length) + " of " + view.length.toLocaleString("en") +
      (view.length === all.length ? " images" : " images with this class (of " + all.length.toLocaleString("en") + ")")) : "no image";
    const h = "sort=" + sortSel.value + "&class=" + encodeURIComponent(clsSel.value) + "&per=" + perSel.value + "&page=" + (page + 1);
    if (location.hash.slice(1) !== h) history.replaceState(null, "", "#" + h);
  }
  function update() {
    const c = clsSel.value;
    view = all.filter((r) => !c || r.classes.indexOf(c) >= 0).sort(keys[sortSel.value] || keys.confidence);
    render();
  }
  const q = new URLSearchParams(location.hash.slice(1));
  if (q.get("sort") && keys[q.get("sort")]) sortSel.value = q.get("sort");
  if (q.get("class") !== null) clsSel.value = q.get("class");
  if (q.get("per") !== null) perSel.value = q.get("per");
  sortSel.onchange = clsSel.onchange = perSel.onchange = () => { page = 0; update(); };
  page = Math.max(0, (parseInt(q.get("page"), 10) || 1) - 1);
  update();
})();
</script>
</body></html>
"""
