"""The result store: tidy CSV rows with provenance, written so that no crash can truncate them.

Layout under ``results_dir`` (normally ``results/``)::

    <profile>/<experiment>.csv                                   one row per (row, seed, metric, split)
    <profile>/histories/<experiment>/<row-slug>__seed<k>.csv     one row per epoch (training curves)

Every file is written whole to a temporary file in the same directory, fsynced and renamed over the
old one (``os.replace`` is atomic on POSIX), so a reader sees either the previous file or the new
one, never a partial write. The read-modify-write of a results CSV holds an exclusive ``flock`` so
that runs of different rows writing to one experiment do not lose each other's rows.

Rows are appended; a rerun of the same (experiment, row, profile, seed, metric, split) **replaces**
the earlier row rather than duplicating it. Published numbers never come here (they live in
``lvit/experiments/``); a row that was not run is absent, never zero.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import numbers
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from lvit.experiments.base import PROFILES, check_profile

COLUMNS: tuple[str, ...] = (
    "experiment", "row", "profile", "seed", "metric", "value", "split", "epoch",
    "git_sha", "dirty", "device", "torch", "timm", "lvit", "started_at", "wall_s", "config_hash",
    "checkpoint_sha256", "shared_run", "backbone_run",
)  # fmt: skip
# Columns a record may leave out, with the value they then take.
# ``shared_run`` names the training a classification row's numbers come from (see :func:`shared_run_path`):
# rows of different tables with the same key are one training, not independent replicates.
# ``backbone_run`` names the shared run a dense row's backbone was pretrained in (empty where the recipe has
# no such pretraining, and in rows stored before lvit recorded it).
OPTIONAL_COLUMNS: Mapping[str, Any] = {
    "checkpoint_sha256": "", "shared_run": "", "backbone_run": "", "experiment": None, "profile": None,
}  # fmt: skip
# The identity of a result: a newer row with the same key supersedes an older one.
KEY: tuple[str, ...] = ("experiment", "row", "profile", "seed", "metric", "split")
_DTYPES: Mapping[str, str] = {
    "seed": "int64", "value": "float64", "epoch": "Int64", "dirty": "bool", "wall_s": "float64",
}  # fmt: skip
HISTORY_ID_COLUMNS: tuple[str, ...] = ("experiment", "row", "profile", "seed")

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Paths the runs themselves write: their changes do not make the code "dirty".
_DIRTY_EXCLUDES = ("results", "data")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state() -> tuple[str, bool]:
    """(HEAD sha, dirty) of the checkout lvit runs from; ("unknown", True) outside a git checkout.

    Dirty means tracked or untracked changes outside ``results/`` and ``data/``. Where the code was copied
    without its ``.git`` (a lent GPU machine gets the working tree, on top of whatever older commit its own
    ``.git`` holds), a tree manifest written beside it by :func:`write_tree_manifest` names the commit: when
    every tracked file's content matches it, that commit is the answer. Otherwise git is asked; without
    either, the code state cannot be vouched for, so it reads as dirty.
    """
    manifest_sha, manifest_dirty = _state_from_manifest()
    if not manifest_dirty:  # the copy's content is exactly that commit's, whatever .git it may carry
        return manifest_sha, False
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return manifest_sha, True
    excludes = [f":(exclude){path}" for path in _DIRTY_EXCLUDES]
    status = _git("status", "--porcelain", "--", ".", *excludes)
    return sha, status is None or status != ""


TREE_MANIFEST = ".lvit-tree.json"  # keep it ignored (.git/info/exclude) so that it never dirties the tree


def write_tree_manifest(root: Path = _REPO_ROOT) -> Path:
    """Record HEAD and the blob hash of every tracked file, for :func:`git_state` on a copy without git.

    Refuses a dirty tree: the manifest vouches for a commit, not for uncommitted edits.
    """
    sha, dirty = git_state()
    if dirty or sha == "unknown":
        raise RuntimeError("commit first: a tree manifest is only written for a clean checkout")
    listing = _git("ls-files", "-s") or ""
    files = {line.split("\t", 1)[1]: line.split()[1] for line in listing.splitlines()}
    path = root / TREE_MANIFEST
    path.write_text(json.dumps({"sha": sha, "files": files}, indent=0))
    return path


def _blob_sha(path: Path) -> str | None:
    """The hash git gives a file's content (``git hash-object``), or None when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _state_from_manifest() -> tuple[str, bool]:
    try:
        manifest = json.loads((_REPO_ROOT / TREE_MANIFEST).read_text())
    except (OSError, ValueError):
        return "unknown", True
    # results/ and data/ change while a run writes them; like git_state's status, they are not the code
    code = {f: blob for f, blob in manifest["files"].items() if f.split("/", 1)[0] not in _DIRTY_EXCLUDES}
    changed = [f for f, blob in code.items() if _blob_sha(_REPO_ROOT / f) != blob]
    return manifest["sha"], bool(changed)


def device_name(device: str) -> str:
    """``cuda:0`` -> ``cuda:0 (NVIDIA H100 80GB HBM3)``; CPU devices name the core count. Under torchrun the
    number of ranks is added (``cuda:0 (NVIDIA H100 80GB HBM3, 8 ranks)``): rank 0 writes for all of them."""
    import torch

    dev = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ranks = f", {world} ranks" if world > 1 else ""
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{dev} ({torch.cuda.get_device_name(dev)}{ranks})"
    if dev.type == "cpu":
        return f"cpu ({os.cpu_count()} cores{ranks})"
    return f"{dev} ({world} ranks)" if world > 1 else str(dev)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(
        f"config value {value!r} of type {type(value).__name__} has no stable JSON form; "
        "use str, int, float, bool, None, lists, dicts, Path, Enum or dataclasses"
    )


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys, no whitespace): order-independent."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode()).hexdigest()


def utc_timestamp(moment: datetime | str) -> str:
    """ISO 8601 in UTC to the second; a naive time or string is taken as UTC. Sorts chronologically."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def provenance(
    profile: str,
    seed: int,
    device: str,
    config: Mapping[str, Any],
    started_at: datetime | str,
    wall_s: float,
    checkpoint_sha256: str = "",
) -> dict[str, Any]:
    """The provenance columns of a result row (everything but row, metric, value, split, epoch)."""
    import timm
    import torch

    import lvit

    check_profile(profile)
    sha, dirty = git_state()
    return {
        "profile": profile,
        "seed": int(seed),
        "git_sha": sha,
        "dirty": dirty,
        "device": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lvit": lvit.__version__,
        "started_at": utc_timestamp(started_at),
        "wall_s": float(wall_s),
        "config_hash": config_hash(config),
        "checkpoint_sha256": checkpoint_sha256,
    }


def results_path(results_dir: str | Path, profile: str, experiment: str) -> Path:
    check_profile(profile)
    return Path(results_dir) / profile / f"{experiment}.csv"


def _validate_record(record: Mapping[str, Any], profile: str, experiment: str, index: int) -> dict[str, Any]:
    missing = [c for c in COLUMNS if c not in record and c not in OPTIONAL_COLUMNS]
    unknown = [c for c in record if c not in COLUMNS]
    if missing or unknown:
        raise ValueError(
            f"result record {index}: missing columns {missing}, unknown columns {unknown}; "
            f"valid columns: {', '.join(COLUMNS)}"
        )
    row = {**OPTIONAL_COLUMNS, **record}
    for column, expected in (("profile", profile), ("experiment", experiment)):
        if row[column] is None:
            row[column] = expected
        elif row[column] != expected:
            raise ValueError(f"result record {index}: {column} {row[column]!r} but writing to {expected!r}")
    value = row["value"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"result record {index}: value must be a finite number (use .item()), got {value!r}")
    if isinstance(row["seed"], bool) or not isinstance(row["seed"], numbers.Integral):
        raise ValueError(f"result record {index}: seed must be an int, got {row['seed']!r}")
    row["value"], row["seed"] = float(value), int(row["seed"])
    row["started_at"] = utc_timestamp(row["started_at"])
    return row


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.lock``: a read-modify-write of ``path``, or the one process that
    creates ``path`` while concurrent ones wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def atomic_write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` via a fsynced temporary file in the same directory and ``os.replace``."""
    return _atomic_write(path, lambda handle: df.to_csv(handle, index=False))


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, like :func:`atomic_write_csv`."""
    return _atomic_write(path, lambda handle: handle.write(text))


def _atomic_write(path: Path, write: Callable[[TextIO], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _empty_results() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for column in COLUMNS:
        if column not in df:  # files written before an optional column existed
            df[column] = OPTIONAL_COLUMNS.get(column) or ""
    df = df[list(COLUMNS)].copy()
    for column in COLUMNS:
        dtype = _DTYPES.get(column, "str")
        df[column] = df[column].fillna("").astype(str) if dtype == "str" else df[column].astype(dtype)
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    # Everything as text first: a git sha of digits or an empty checkpoint must not become a number/NaN.
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw["epoch"] = raw["epoch"].replace("", None)
    raw["dirty"] = raw["dirty"].map({"True": True, "False": False})
    return _typed(raw)


def append_results(
    results_dir: str | Path, profile: str, experiment: str, records: Sequence[Mapping[str, Any]]
) -> Path:
    """Add ``records`` to ``results/<profile>/<experiment>.csv`` atomically; returns the path.

    Each record is :func:`provenance` plus ``row, metric, value, split, epoch`` (``experiment`` and
    ``profile`` may be left out). Existing rows are kept, except those with the same
    (experiment, row, profile, seed, metric, split) as a new record, which the new record replaces.
    """
    path = results_path(results_dir, profile, experiment)
    rows = [_validate_record(r, profile, experiment, i) for i, r in enumerate(records)]
    if not rows:
        raise ValueError("no result records to append")
    new = _typed(pd.DataFrame(rows))
    if new.duplicated(list(KEY)).any():
        dupes = new[new.duplicated(list(KEY), keep=False)][list(KEY)].to_dict("records")
        raise ValueError(f"records repeat a result key {KEY}: {dupes}")
    with locked(path):
        old = _read_csv(path) if path.exists() else _empty_results()
        superseded = old.set_index(list(KEY)).index.isin(new.set_index(list(KEY)).index)
        merged = pd.concat([old[~superseded], new], ignore_index=True) if len(old) else new
        return atomic_write_csv(merged, path)


def load_results(
    results_dir: str | Path, profile: str | None = None, experiment: str | None = None
) -> pd.DataFrame:
    """All result rows under ``results_dir``, optionally of one profile and/or experiment.

    Returns a DataFrame with :data:`COLUMNS` (empty, with those columns, when nothing was run).
    """
    root = Path(results_dir)
    profiles = [profile] if profile is not None else list(PROFILES)
    if profile is not None:
        check_profile(profile)
    paths = [
        path
        for p in profiles
        for path in sorted((root / p).glob(f"{experiment or '*'}.csv"))
    ]
    frames = [_read_csv(path) for path in paths]
    if not frames:
        return _empty_results()
    return pd.concat(frames, ignore_index=True)


def latest_results(df: pd.DataFrame) -> pd.DataFrame:
    """The newest row (by ``started_at``) per (experiment, row, profile, seed, metric, split)."""
    ordered = df.sort_values("started_at", kind="stable")
    return ordered.drop_duplicates(list(KEY), keep="last").sort_index().reset_index(drop=True)


def reusable_results(
    df: pd.DataFrame, experiment: str, row: str, profile: str, seed: int, config_hash: str
) -> pd.DataFrame:
    """Newest rows of one (experiment, row, profile, seed) run with this ``config_hash``.

    Non-empty means the run can be skipped and these rows reused; a changed config gives nothing.
    """
    latest = latest_results(df)
    match = (
        (latest["experiment"] == experiment)
        & (latest["row"] == row)
        & (latest["profile"] == profile)
        & (latest["seed"] == seed)
        & (latest["config_hash"] == config_hash)
    )
    return latest[match].reset_index(drop=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and n over seeds of the newest rows.

    One row per (experiment, profile, row, metric, split); profiles are never pooled.
    """
    group = ["experiment", "profile", "row", "metric", "split"]
    if df.empty:
        return pd.DataFrame(columns=[*group, "mean", "std", "n"])
    stats = latest_results(df).groupby(group, sort=False)["value"].agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"}).reset_index()


def row_slug(row: str) -> str:
    """A file-name form of a row label: ``"h-swish + SE-192"`` -> ``"h-swish-se-192"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-")
    if not slug:
        raise ValueError(f"row label {row!r} has no letters or digits to name a file by")
    return slug


def shared_run_path(results_dir: str | Path, profile: str, run: str) -> Path:
    """Where one classification training (model, kwargs, recipe, seed) keeps its history and provenance.

    Tables share rows (DeiT-T is in four of them); each such training runs once per profile and seed and every
    table that declares it reads the same run, so its numbers agree across tables. ``run`` is a training's
    key, whose first 16 hex digits name its first run, or a stored run's name: that, or
    :func:`retraining_name` for a later training of the same configuration.
    """
    check_profile(profile)
    name = run if "@" in run else run[:16]
    return Path(results_dir) / profile / "runs" / f"{name}.json"


def shared_run_weights_path(results_dir: str | Path, profile: str, run: str) -> Path:
    """The final weights of a shared classification run, beside its record (a torch state_dict file:
    load it with ``torch.load(..., weights_only=True)``)."""
    return shared_run_path(results_dir, profile, run).with_suffix(".pt")


def retraining_name(train_key: str, started: datetime) -> str:
    """The run name of a later training of a configuration that has a stored run: ``<key16>@<UTC start>``.

    Weights are not committed, so a machine that needs a stored run's weights (a dense backbone) trains its
    configuration again. That training is a run of its own, with its own record beside the first: the first
    record stays what the table rows that cite it were computed from.
    """
    return f"{train_key[:16]}@{started.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"


def shared_run_names(results_dir: str | Path, profile: str, train_key: str) -> list[str]:
    """The stored runs of one configuration: its first run, then later trainings by start time."""
    first = shared_run_path(results_dir, profile, train_key)
    later = sorted(p.stem for p in first.parent.glob(f"{first.stem}@*.json"))
    return ([first.stem] if first.exists() else []) + later


def history_path(results_dir: str | Path, profile: str, experiment: str, row: str, seed: int) -> Path:
    check_profile(profile)
    return Path(results_dir) / profile / "histories" / experiment / f"{row_slug(row)}__seed{seed}.csv"


def write_history(
    results_dir: str | Path,
    profile: str,
    experiment: str,
    row: str,
    seed: int,
    history: Sequence[Mapping[str, Any]],
) -> Path:
    """Write the whole per-epoch history of one run (each entry has ``epoch``), replacing the last.

    The file also carries ``experiment, row, profile, seed`` so that the exact row label survives
    the slug; two labels with the same slug are refused rather than overwriting each other.
    """
    path = history_path(results_dir, profile, experiment, row, seed)
    if not history:
        raise ValueError("empty history: nothing to write")
    for i, entry in enumerate(history):
        if "epoch" not in entry:
            raise ValueError(f"history entry {i} has no 'epoch': {dict(entry)}")
        clash = [c for c in HISTORY_ID_COLUMNS if c in entry]
        if clash:
            raise ValueError(f"history entry {i} must not set {clash}; they come from the arguments")
    if path.exists():
        previous = pd.read_csv(path, usecols=["row"], dtype=str, keep_default_na=False, nrows=1)
        if len(previous) and previous["row"].iloc[0] != row:
            raise ValueError(
                f"{path} holds row {previous['row'].iloc[0]!r}, whose slug equals that of {row!r}; "
                "rename one of the rows"
            )
    ids = {"experiment": experiment, "row": row, "profile": profile, "seed": int(seed)}
    frame = pd.DataFrame([{**ids, **entry} for entry in history])
    return atomic_write_csv(frame, path)


def load_histories(results_dir: str | Path, profile: str, experiment: str) -> pd.DataFrame:
    """All per-epoch histories of one experiment and profile, long by epoch, sorted by row, seed, epoch."""
    check_profile(profile)
    folder = Path(results_dir) / profile / "histories" / experiment
    frames = [
        pd.read_csv(path, dtype={"row": str, "experiment": str, "profile": str})
        for path in sorted(folder.glob("*__seed*.csv"))
    ]
    if not frames:
        return pd.DataFrame(columns=[*HISTORY_ID_COLUMNS, "epoch"])
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["row", "seed", "epoch"], kind="stable").reset_index(drop=True)


def collapse_flags(results_dir: str | Path, profile: str, experiment: str) -> pd.DataFrame:
    """Per (row, seed) with a history: ``collapsed``, whether its last validation predicted one constant
    map for every image (``val_constant_fraction`` = 1), and ``dead_at_init``, whether it already did so
    before its first step (``init_constant_fraction`` = 1 in the first entry; NA where not recorded).

    A collapsed depth model's final ReLU outputs 0 everywhere; scale-and-shift alignment then scores the
    same constant whatever the model, so such a run's metrics say nothing about its architecture.
    """
    histories = load_histories(results_dir, profile, experiment)
    columns = ["row", "seed", "collapsed", "dead_at_init"]
    if "val_constant_fraction" not in histories:
        return pd.DataFrame(columns=columns)
    runs = histories.groupby(["row", "seed"], sort=False)
    first, last = runs.head(1).reset_index(drop=True), runs.tail(1).reset_index(drop=True)
    at_init = first.get("init_constant_fraction", pd.Series(float("nan"), index=first.index))
    return pd.DataFrame({
        "row": last["row"], "seed": last["seed"].astype(int),
        "collapsed": last["val_constant_fraction"] == 1.0,
        "dead_at_init": pd.array([None if pd.isna(f) else f == 1.0 for f in at_init], dtype="boolean"),
    })[columns]


def mark_collapsed(df: pd.DataFrame, results_dir: str | Path) -> pd.DataFrame:
    """``df`` with the columns of :func:`collapse_flags` for each result row's run, read from the histories
    under ``results_dir``: ``collapsed`` False and ``dead_at_init`` NA where no history says otherwise."""
    collapsed = pd.Series(False, index=df.index, dtype=bool)
    dead_at_init = pd.Series(pd.NA, index=df.index, dtype="boolean")
    for (profile, experiment), group in df.groupby(["profile", "experiment"], sort=False):
        flags = collapse_flags(results_dir, str(profile), str(experiment)).set_index(["row", "seed"])
        found = flags.reindex(pd.MultiIndex.from_arrays([group["row"], group["seed"].astype(int)]))
        collapsed[group.index] = found["collapsed"].fillna(False).astype(bool).to_numpy()
        dead_at_init[group.index] = found["dead_at_init"].astype("boolean").to_numpy()
    return df.assign(collapsed=collapsed, dead_at_init=dead_at_init)
