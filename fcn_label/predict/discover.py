"""Inputs -> items: folders, files, globs and list files, each with an output name nothing can collide with."""

from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from ..devices import rank_and_world
from ..images import IMAGE_EXTENSIONS
from ..predfolder.layout import OUTPUT_SUFFIXES, RESERVED_DIRS, output_files
from ..predfolder.records import shown
from ..storage import ObjectUrl, StorageError, explain, is_url, join, open_store, shown_url

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class Item:
    path: Path | ObjectUrl  # a local file, or a remote object's URL (shown without credentials)
    rel: str  # output path relative to --out, without suffix, POSIX separators


def _safe_rel(path: Path, base: Path | None) -> str:
    """Output-relative name for ``path``: relative to ``base`` when inside it, never with '..'."""
    p = Path(os.path.normpath(os.path.abspath(path)))
    if base is not None:
        b = Path(os.path.normpath(os.path.abspath(base)))
        try:
            rel = p.relative_to(b)
            return rel.with_suffix("").as_posix()
        except ValueError:
            pass
    parts = [x for x in p.parts[1:] if x not in ("..", ".", "")]  # drop the anchor: never absolute
    return PurePosixPath(*parts).with_suffix("").as_posix() if parts else p.stem


def _walk(root: Path, skip: Path | None) -> list[tuple[Path, str]]:
    """Image files under ``root`` with their output names (what ``_safe_rel(f, root)`` gives, computed
    once per folder: path arithmetic per file cost seconds per 100,000 images)."""
    found = []
    root_abs = os.path.normpath(os.path.abspath(root))
    skip_abs = os.path.normpath(os.path.abspath(skip)) if skip else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if skip_abs and os.path.normpath(os.path.abspath(dirpath)) == skip_abs:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and
                             (not skip_abs or os.path.normpath(os.path.abspath(os.path.join(dirpath, d))) != skip_abs))
        sub = os.path.relpath(os.path.normpath(os.path.abspath(dirpath)), root_abs)
        prefix = "" if sub == "." else sub.replace(os.sep, "/") + "/"
        folder = Path(dirpath)
        for f in sorted(filenames):
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append((folder / f, prefix + f[: f.rfind(".")]))
    return found


def discover(inputs: Sequence[str | os.PathLike], out: Path | None = None) -> tuple[list[Item], list[tuple[str, str]]]:
    """Items to predict from folders, files, globs and list files, in a stable order.

    Returns the items and ``(path, reason)`` for every input that cannot be used;
    the output folder itself is never read back as input.
    """
    items: list[Item] = []
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        raw = str(raw)
        if is_url(raw):
            _discover_url(raw, out, items, problems)
            continue
        p = Path(raw)
        if any(ch in raw for ch in "*?[") and not p.exists():
            matches = sorted(glob.glob(raw, recursive=True))
            base = Path(raw.split("*")[0].split("?")[0].split("[")[0])
            base = base if raw.endswith(os.sep) or base.is_dir() else base.parent
            files = [Path(m) for m in matches if Path(m).is_file() and not _inside(Path(m), out)]
            if not files:
                problems.append((raw, "glob matched no files; check the pattern and quote it"))
            items += [Item(f, _safe_rel(f, base)) for f in files]
        elif p.is_dir() and _inside(p, out):
            problems.append((raw, f"is the output folder {out} or inside it, and outputs are never read back as "
                                  "inputs; choose an --out outside the input folder"))
        elif p.is_dir():
            files = _walk(p, None if out is not None and is_url(out) else out)
            if not files:
                problems.append((raw, f"folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
            items += [Item(f, rel) for f, rel in files]
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            for n, entry in _list_entries(p.read_text(encoding="utf-8", errors="replace")):
                entry = entry.split()[0] if not Path(p.parent / entry).exists() and len(entry.split()) == 2 else entry
                if is_url(entry):  # a local list may name objects; each is fetched (or fails) when decoded
                    items.append(Item(ObjectUrl(entry), _url_rel(entry, None)))
                    continue
                f = Path(entry) if Path(entry).is_absolute() else p.parent / entry
                if not f.is_file():
                    problems.append((str(f), f"listed in {p}:{n} but not found; fix the list or the path"))
                    continue
                items.append(Item(f, _safe_rel(f, p.parent)))
        elif p.is_file():
            items.append(Item(p, p.stem))
        elif p.is_symlink():
            problems.append((raw, "broken symbolic link; fix or remove it"))
        else:
            problems.append((raw, "not found; check the path (folders, files, globs and .txt lists are accepted)"))
    return _dedupe(items, out), problems


def _list_entries(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, entry)`` for each line of a list file that names something: blank lines and ``#``
    comments skipped, the entry stripped."""
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield n, entry


def _url_rel(url: str, base: str | None) -> str:
    """Output name of an object: its key relative to ``base`` (a prefix URL) when below it, else its
    bucket and key; without the extension, never with '..' or an empty part."""
    u = shown_url(url)
    if base is not None and u.startswith(base.rstrip("/") + "/"):
        key = u[len(base.rstrip("/")) + 1:]
    else:
        key = u.split("://", 1)[-1]
    parts = [x for x in key.split("/") if x not in ("..", ".", "")]
    if not parts:
        return "image"
    last = parts[-1]
    parts[-1] = last[: last.rfind(".")] if "." in last.lstrip(".") else last
    return "/".join(parts)


def _discover_url(raw: str, out, items: list[Item], problems: list[tuple[str, str]]) -> None:
    """A URL input: a prefix (walked like a folder), one object, or a list file (.txt...) of keys relative
    to its own folder or of full URLs. A store that cannot be used at all (no bucket, denied, no
    credentials, no answer) raises :class:`StorageError` (exit 2 before any work); a prefix or object that
    is not there is one problem row, as for a local path. The objects a list names are not checked one by
    one here (a request each): one that is missing fails when it is fetched, as one row."""
    url = raw.rstrip("/")
    shown = shown_url(url)
    store = open_store(url)
    try:
        is_dir = store.isdir()
        is_file = not is_dir and store.isfile()
        if not is_dir and not is_file:
            store.check_bucket("input")
            problems.append((shown, "not found; check the URL (a prefix must hold at least one object)"))
            return
        if is_dir:
            skip = _url_below(out, url)
            if skip == "":
                problems.append((shown, f"is the output prefix {shown_url(str(out))} or inside it, and outputs are "
                                        "never read back as inputs; choose an --out outside the input prefix"))
                return
            n0 = len(items)
            for rel in store.walk_files(skip=skip):
                name = rel.rpartition("/")[2]
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                items.append(Item(ObjectUrl(store.url_of(rel)), rel[: rel.rfind(".")]))
            if len(items) == n0:
                problems.append((shown, f"prefix holds no images ({', '.join(IMAGE_EXTENSIONS)})"))
            return
        if url.lower().endswith(LIST_SUFFIXES):
            text = store.read_bytes().decode("utf-8", errors="replace")
            folder = url.rsplit("/", 1)[0]
            for _, entry in _list_entries(text):
                words = entry.split()
                if len(words) == 2 and all(w.lower().endswith(IMAGE_EXTENSIONS) for w in words):
                    entry = words[0]  # an 'image mask' line (a key with a space is kept whole: no request per line)
                target = entry if is_url(entry) else join(folder, entry.lstrip("/"))
                items.append(Item(ObjectUrl(target), _url_rel(target, shown_url(folder))))
            return
        items.append(Item(ObjectUrl(url), _url_rel(url, shown_url(url.rsplit("/", 1)[0]))))
    except StorageError:
        raise
    except Exception as e:  # the store's own error types: it cannot be used at all
        raise StorageError("input " + explain(url, e, "listing")) from None


def _url_below(out, url: str) -> str | None:
    """``out``'s path relative to the prefix ``url`` when it is inside it ("" when it is ``url``), else None."""
    if out is None or not is_url(out):
        return None
    o, u = str(out).rstrip("/"), url.rstrip("/")
    if o == u:
        return ""
    return o[len(u) + 1:] if o.startswith(u + "/") else None


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None or is_url(folder):
        return False
    a, b = os.path.abspath(path), os.path.abspath(folder)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


MAX_NAME_BYTES = 255 - max(len(s) for s in OUTPUT_SUFFIXES)


def _fit(rel: str) -> str:
    """Shorten the last part of ``rel`` to fit the file-name limit, keeping its start and a hash of the whole."""
    head, _, name = rel.rpartition("/")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_NAME_BYTES:
        return rel
    tag = "~" + hashlib.sha1(raw).hexdigest()[:10]
    name = raw[: MAX_NAME_BYTES - 40].decode("utf-8", "ignore") + tag
    return f"{head}/{name}" if head else name


def _dedupe(items: list[Item], out: Path | None = None) -> list[Item]:
    """Drop repeats of the same file and give every item an output name nothing else can collide with.

    a.jpg and a.png become a_jpg and a_png; a name still taken (by another such name,
    by a folder of outputs: a file 'x.bmp' next to a folder 'x.png/', or by an input
    file: ``predict a.png --out .``) gets '~2', '~3'... An input folder named like one of
    predict's own (confidence/, overlays/, .fcn-label/) becomes 'confidence~2/'. Names
    compare case-insensitively, as on macOS and Windows volumes. The result depends only
    on the (sorted) inputs, so a re-run finds the same names.
    """
    seen, unique = set(), []
    for it in items:
        key = it.path if isinstance(it.path, ObjectUrl) else os.path.abspath(it.path)
        if key not in seen:
            seen.add(key)
            unique.append(it)
    rels = [_unreserve(shown(it.rel)) for it in unique]
    stems = Counter(r.lower() for r in rels)
    folders = {p.lower() for r in rels for p in _ancestors(r)}
    remote_out = out is not None and is_url(out)
    root = (str(out).rstrip("/") if remote_out else os.path.realpath(out)) if out is not None else None
    sep = "/" if remote_out else os.sep
    # only an input inside --out can be where an output goes: keep just those (a million paths otherwise)
    inputs = {p for p in (_object_urls(unique) if remote_out else _real_paths([it.path for it in unique
                                                                                if not isinstance(it.path, ObjectUrl)]))
              if p.startswith(root.rstrip(sep) + sep)} if root else set()

    def clashes(rel: str) -> bool:
        if rel.lower() in taken or any(f"{rel}{s}".lower() in folders for s in OUTPUT_SUFFIXES):
            return True
        return bool(inputs) and any((join(root, p) if remote_out else os.path.join(root, p)) in inputs
                                    for p in output_files(rel))

    taken: set[str] = set()
    result = []
    for it, base in zip(unique, rels):
        if stems[base.lower()] > 1:
            base = f"{base}{_suffix(it.path).lower().replace('.', '_')}"
        base = _fit(base)
        rel, n = base, 1
        while clashes(rel):
            n += 1
            rel = _fit(f"{base}~{n}")
        taken.add(rel.lower())
        result.append(it if rel == it.rel else Item(it.path, rel))
    return result


def _suffix(path) -> str:
    if isinstance(path, ObjectUrl):
        name = path.rsplit("/", 1)[-1]
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""
    return path.suffix


def _object_urls(items: Sequence[Item]) -> set[str]:
    return {str(it.path) for it in items if isinstance(it.path, ObjectUrl)}


def _real_paths(paths: Sequence[Path]) -> set[str]:
    """``os.path.realpath`` of each path, resolving each folder once (a file that is itself a link
    is resolved in full): the same set, a few times faster for many files per folder."""
    folders: dict[str, str] = {}
    out = set()
    for p in paths:
        s = os.path.abspath(p)
        if os.path.islink(s):
            out.add(os.path.realpath(s))
            continue
        d, _, name = s.rpartition(os.sep)
        real = folders.get(d)
        if real is None:
            real = folders[d] = os.path.realpath(d or os.sep)
        out.add(os.path.join(real, name))
    return out


def _unreserve(rel: str) -> str:
    head, sep, rest = rel.partition("/")
    return f"{head}~2/{rest}" if sep and head.lower() in RESERVED_DIRS else rel


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def shard_from_env() -> tuple[int, int]:
    """torchrun's RANK / WORLD_SIZE, so N launched processes split one job."""
    return rank_and_world()
