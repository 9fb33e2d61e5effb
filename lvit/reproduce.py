"""``lvit reproduce``: run every notebook through papermill at one profile, then write the report.

Also the parameter check every notebook calls first (:func:`validate_parameters`), so that a typo or an
unknown value stops the notebook with a message listing the valid choices instead of running with a
default. Paths resolve from the project root, never from the working directory: papermill starts the
kernel in the caller's cwd unless told otherwise, nbval in the notebook's directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from lvit.experiments import get_experiment
from lvit.experiments.base import TRAINED_PROFILES, check_profile, did_you_mean

if TYPE_CHECKING:  # pandas and torch load only when a notebook runs an experiment
    import pandas as pd

    from lvit.engine.run import PendingWork

# The notebook that collates the others; it runs last.
REPORT_NOTEBOOK = "report"
KERNEL_NAME = "python3"
# Where a notebook's empty ``results_dir`` points, when set: `make test` points nbval at a fresh
# directory, so that the regression check recomputes every smoke number instead of reusing results/.
RESULTS_DIR_ENV = "LVIT_RESULTS_DIR"


def project_root() -> Path:
    """The checkout that holds ``lvit/``, ``notebooks/`` and ``results/`` (lvit is installed editable)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "notebooks").is_dir():
        raise RuntimeError(f"lvit is not running from its checkout (no notebooks/ beside {root / 'lvit'}); "
                           "install it with `pip install -e .` from the repository")
    return root


def _resolve(path: str | Path, default: str) -> Path:
    """An empty path means the project default; a relative one is relative to the project root."""
    path = Path(path or default).expanduser()
    return path if path.is_absolute() else project_root() / path


def _valid_devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def check_device(device: str) -> str:
    """``device`` if this machine has it (``auto``: CUDA when present, else CPU), else ``ValueError``
    naming the valid ones."""
    devices = _valid_devices()
    if device not in devices:
        raise ValueError(f"unknown or unavailable device {device!r}{did_you_mean(str(device), devices)}; "
                         f"valid devices here: {', '.join(devices)}")
    if device == "auto":
        return devices[2] if len(devices) > 2 else "cpu"
    return device


@dataclass(frozen=True)
class NotebookParameters:
    """Checked and resolved notebook parameters: absolute paths, a concrete device, the seed list."""

    profile: str
    seeds: list[int]
    device: str
    data_root: Path
    results_dir: Path  # the results root; this profile's files go under results_dir / profile
    rows: list[str] | None

    @property
    def profile_dir(self) -> Path:
        return self.results_dir / self.profile

    @property
    def figures_dir(self) -> Path:
        return self.profile_dir / "figures"


def validate_parameters(profile: str, seeds: int, device: str = "auto", data_root: str = "",
                        results_dir: str = "", experiment: str | None = None,
                        rows: Sequence[str] | None = None) -> NotebookParameters:
    """Check a notebook's parameters and resolve them; raise ``ValueError`` naming the valid choices.

    ``seeds`` is a count (seeds 0..N-1); 0 means the experiment's declared count at ``profile`` (1 without an
    experiment). ``device="auto"`` picks CUDA when present. Empty paths mean
    ``<project>/data`` and ``<project>/results`` (or ``$LVIT_RESULTS_DIR``). ``rows`` (optional)
    restricts ``experiment`` to a subset of its declared row labels.
    """
    check_profile(profile)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise ValueError(f"seeds must be an int >= 0 (the number of seeds; 0: the experiment's default), "
                         f"got {seeds!r}")
    device = check_device(device)
    declared = get_experiment(experiment) if experiment is not None else None
    if declared is not None:
        declared.recipe(profile)  # raises KeyError listing the profiles the experiment declares
    if seeds == 0:
        seeds = declared.default_seeds(profile) if declared is not None else 1
    chosen = list(rows) if rows else None
    if chosen is not None:
        if declared is None:
            raise ValueError("rows given without an experiment to take them from")
        labels = [r.label for r in declared.rows]
        unknown = [r for r in chosen if r not in labels]
        if unknown:
            raise ValueError(f"unknown rows {unknown} for {declared.name!r}; valid rows: {labels}")
    return NotebookParameters(profile=profile, seeds=list(range(seeds)), device=device,
                              data_root=_resolve(data_root, "data"),
                              results_dir=_resolve(results_dir, os.environ.get(RESULTS_DIR_ENV, "results")),
                              rows=chosen)


def run_notebook_experiment(experiment: str, profile: str, seeds: int, device: str = "auto",
                            data_root: str = "", results_dir: str = "", rows: Sequence[str] | None = None,
                            reuse: bool = True) -> tuple[NotebookParameters, pd.DataFrame]:
    """A notebook's parameters checked (:func:`validate_parameters`), then its experiment run or reused
    (:func:`lvit.engine.run.run_experiment`): the resolved parameters and the stored result rows."""
    from lvit.engine.run import run_experiment

    params = validate_parameters(profile=profile, seeds=seeds, device=device, data_root=data_root,
                                 results_dir=results_dir, experiment=experiment, rows=rows)
    results = run_experiment(experiment, params.profile, params.seeds, params.device, params.data_root,
                             params.results_dir, rows=params.rows, reuse=reuse)
    return params, results


# --------------------------------------------------------------------------------------------------
# Batch runs
# --------------------------------------------------------------------------------------------------


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def notebook_names() -> list[str]:
    """Every notebook, the report last."""
    names = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
    return [n for n in names if n != REPORT_NOTEBOOK] + [n for n in names if n == REPORT_NOTEBOOK]


def check_parameter_names(notebook: Path, parameters: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if a parameter is not declared in the notebook's ``parameters`` cell.

    papermill itself only logs "Passed unknown parameter" and runs on with the defaults.
    """
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        hints = "".join(f"\n  {name!r}{did_you_mean(name, list(declared))}" for name in unknown)
        raise ValueError(f"{notebook.name} has no parameter{'s' if len(unknown) > 1 else ''}:{hints}\n"
                         f"valid parameters: {', '.join(declared)}")


def run_notebook(name: str, parameters: Mapping[str, Any], output_dir: Path,
                 execution_timeout: int | None = None, log_output: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``output_dir``; return the output path.

    Raises ``papermill.PapermillExecutionError`` when a cell fails (the output notebook is still
    written, with the error shown at the top).
    """
    import papermill

    names = notebook_names()
    if name not in names:
        raise ValueError(f"unknown notebook {name!r}{did_you_mean(name, names)}; "
                         f"valid notebooks: {', '.join(names)}")
    source = notebooks_dir() / f"{name}.ipynb"
    check_parameter_names(source, parameters)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(source), str(output), parameters=dict(parameters), kernel_name=KERNEL_NAME,
                               cwd=str(source.parent), progress_bar=False, log_output=log_output,
                               execution_timeout=execution_timeout)
    return output


@dataclass(frozen=True)
class Failure:
    notebook: str
    error: str
    output: Path


@dataclass(frozen=True)
class Reproduction:
    report: Path  # the REPORT.md written after the notebooks
    failures: list[Failure]
    skipped: dict[str, str]  # table notebook -> the dataset it would read at the profile, which has no loader


def reproduce(profile: str, only: Sequence[str] | None = None, seeds: int | None = None,
              device: str = "auto", overrides: Mapping[str, Any] | None = None,
              execution_timeout: int | None = None, log_output: bool = False, jobs: int = 1,
              train_workers: int = 0) -> Reproduction:
    """Run the chosen notebooks (default: all) at ``profile``, continuing past failures; then the report.

    Executed notebooks and ``REPORT.md`` go under the results root the notebooks write to (the
    ``results_dir`` parameter, else ``$LVIT_RESULTS_DIR``, else ``<project>/results``).

    Every parameter name is checked against every chosen notebook before anything runs. ``jobs > 1`` runs
    that many notebooks at once (one kernel process each): the proxy's small models leave a GPU mostly idle
    between kernel launches, so concurrent notebooks fill it. Trainings they share are created under file
    locks (:mod:`lvit.engine.run`), so none is done twice. The report notebook always runs last, alone.

    ``train_workers > 0`` also starts that many processes which do the chosen tables' trainings
    (:func:`lvit.engine.run.pending_work`: the dense backbones' pretrainings, the dense runs, the
    classification trainings) alongside the notebooks. A notebook runs its rows one after another, so
    without them each notebook is a queue of trainings; with them the trainings run that many at once, and
    the notebooks read the stored runs (or wait on a run's lock).
    """
    from lvit.report import write_report

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if train_workers < 0:
        raise ValueError(f"train_workers must be >= 0, got {train_workers}")
    chosen, parameters, checked, skipped = _checked_request(profile, only, seeds, device, overrides)
    output_dir = checked.profile_dir / "notebooks"

    def run_one(name: str) -> tuple[Failure | None, float]:
        """(failure or None, seconds the notebook ran): timed here, not from submission, which queues."""
        started = time.perf_counter()
        try:
            run_notebook(name, parameters, output_dir, execution_timeout, log_output)
        except Exception as error:  # noqa: BLE001 - any failure of one notebook is reported, the rest run
            message = f"{type(error).__name__}: {_first_line(error)}"
            return Failure(name, message, output_dir / f"{name}.ipynb"), time.perf_counter() - started
        return None, time.perf_counter() - started

    failures: list[Failure] = []

    def run_wave(wave: list[str], bar: tqdm) -> None:
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads: each notebook is its own kernel
            submitted = {pool.submit(run_one, name): name for name in wave}
            for future in as_completed(submitted):
                failure, seconds = future.result()
                failures.extend([failure] if failure else [])
                bar.write(f"{'FAILED' if failure else 'ok':>6} {submitted[future]} ({seconds:.0f} s)")
                bar.update()

    with tqdm(total=len(chosen), desc=f"lvit reproduce ({profile})", unit="notebook") as bar:
        with _pending_work_in_workers(chosen, seeds, checked, "rows" in parameters, train_workers, bar):
            run_wave([n for n in chosen if n != REPORT_NOTEBOOK], bar)
        run_wave([n for n in chosen if n == REPORT_NOTEBOOK], bar)  # last and alone: it reads every result
    return Reproduction(write_report(checked.results_dir), failures, skipped)


def _checked_request(
    profile: str, only: Sequence[str] | None, seeds: int | None, device: str,
    overrides: Mapping[str, Any] | None,
) -> tuple[list[str], dict[str, Any], NotebookParameters, dict[str, str]]:
    """The chosen notebooks that can run, their parameters, the checked, resolved values and the chosen
    tables skipped for want of a loader (:func:`_without_loader`), or ``ValueError`` before anything runs;
    the resolved paths are the ones the notebooks will use. Skipped notebooks' parameters are checked too."""
    names = notebook_names()
    chosen = list(only) if only else names
    unknown = [f"{n!r}{did_you_mean(n, names)}" for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"unknown notebooks {', '.join(unknown)}; valid notebooks: {', '.join(names)}")
    parameters: dict[str, Any] = {"profile": profile, "device": device, **(overrides or {})}
    if seeds is not None:
        parameters["seeds"] = seeds
    checked = validate_parameters(profile, seeds or 0, device, data_root=parameters.get("data_root", ""),
                                  results_dir=parameters.get("results_dir", ""))
    for name in chosen:
        check_parameter_names(notebooks_dir() / f"{name}.ipynb", parameters)
    skipped = _without_loader(chosen, checked.profile)
    return [name for name in chosen if name not in skipped], parameters, checked, skipped


def skip_note(name: str, dataset: str, profile: str) -> str:
    return f"skipped {name}: it reads {dataset!r} at {profile}, for which lvit has no loader"


def _without_loader(chosen: Sequence[str], profile: str) -> dict[str, str]:
    """The chosen table notebooks that cannot run at ``profile`` because lvit has no loader for the dataset
    they read there (DPT's MIX 6 at paper), with that dataset: skipped, so that the others run."""
    from lvit.engine.run import missing_loader

    missing = {name: missing_loader(name, profile) for name in _experiment_notebooks(chosen)}
    return {name: dataset for name, dataset in missing.items() if dataset is not None}


def _experiment_notebooks(chosen: Sequence[str]) -> list[str]:
    """The chosen notebooks that run an experiment of the same name (the report notebook does not)."""
    from lvit.experiments import list_experiments

    experiments = {e.name for e in list_experiments()}
    return [n for n in chosen if n in experiments]


def plan(
    profile: str, only: Sequence[str] | None = None, seeds: int | None = None, device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
) -> tuple[NotebookParameters, list[PendingWork], dict[str, str]]:
    """What :func:`reproduce` with these arguments would train, in the order its workers would, without
    running anything: :func:`lvit.engine.run.pending_work` over the chosen tables (whole tables: a ``rows``
    override is refused), and the tables it would skip for want of a loader."""
    from lvit.engine.run import pending_work

    chosen, parameters, checked, skipped = _checked_request(profile, only, seeds, device, overrides)
    if "rows" in parameters:
        raise ValueError("a dry run lists whole tables; drop the rows parameter")
    tables = _experiment_notebooks(chosen)
    pending = pending_work(tables, checked.profile, seeds, checked.device, checked.results_dir,
                           checked.data_root)  # fmt: skip
    return checked, pending, skipped


def describe_plan(
    checked: NotebookParameters, pending: Sequence[PendingWork], skipped: Mapping[str, str]
) -> str:
    """:func:`plan`'s work as a numbered list, with each item's wall-time hint
    (:func:`lvit.engine.run.wall_hints`) and what they add up to; first the tables skipped."""
    from lvit.engine.run import DenseRun, wall_hints

    notes = [skip_note(name, dataset, checked.profile) for name, dataset in skipped.items()]
    if not pending:
        return "\n".join([*notes, f"nothing to train at {checked.profile}: the chosen notebooks' trainings "
                          "are all stored"])
    hints = wall_hints(pending, checked.results_dir, checked.profile)
    lines = [*notes, f"to train at {checked.profile} (results under {checked.profile_dir}), in this order:"]
    for number, (work, hint) in enumerate(zip(pending, hints, strict=True), 1):
        kind, name, what = (("dense", work.experiment, ", ".join(work.rows)) if isinstance(work, DenseRun)
                            else ("train", work.model, work.desc))  # fmt: skip
        seconds = f"{hint:8.0f} s" if hint is not None else "       – "
        lines.append(f"{number:4}. {kind:<6}{name:<28}{what:<40}seed {work.seed:<3}{seconds}")
    dense = sum(isinstance(work, DenseRun) for work in pending)
    known = [hint for hint in hints if hint is not None]
    lines.append(f"{len(pending) - dense} classification trainings and {dense} dense runs.")
    if known:
        lines.append(f"The seconds are what stored results of the same configuration took at other seeds "
                     f"(median), {sum(known):.0f} s for {len(known)} of {len(pending)}: a hint, not this "
                     "run's time (those runs may have shared their GPU, and may be of older code).")
    return "\n".join(lines)


@contextlib.contextmanager
def _pending_work_in_workers(chosen: Sequence[str], seeds: int | None, checked: NotebookParameters,
                             row_subset: bool, workers: int, bar: tqdm) -> Iterator[None]:
    """Do the chosen tables' pending trainings in ``workers`` processes while the body runs.

    A worker that fails only costs time: the notebook that needs the run trains it itself and reports any
    error. Leaving the block waits for the workers, so nothing is left running behind the report.
    """
    from lvit.engine.run import DenseRun, pending_work, run_pending

    names = _experiment_notebooks(chosen)
    if not workers or not names or row_subset:  # a row subset: let the notebooks decide
        yield
        return
    pending = pending_work(names, checked.profile, seeds, checked.device, checked.results_dir,
                           checked.data_root)  # fmt: skip
    dense = sum(isinstance(work, DenseRun) for work in pending)
    bar.write(f"{len(pending) - dense} classification trainings and {dense} dense runs to do, {workers} at "
              "once beside the notebooks")
    context = multiprocessing.get_context("spawn")  # a fresh CUDA context per worker; fork cannot give one
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(run_pending, work) for work in pending]
        try:
            yield
        except BaseException:  # interrupted: start nothing more (running trainings end with the pool)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        for future in futures:
            if future.exception() is not None:
                bar.write(f"  a training failed in its worker: {future.exception()!r}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    # PapermillExecutionError's message opens with a separator line; the useful line follows.
    lines = [line for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    return lines[-1] if lines else repr(error)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def default_profile() -> str:
    import torch

    return "proxy" if torch.cuda.is_available() else "smoke"


def parse_override(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from a command line: VALUE parsed as JSON, else kept as a bare string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare string


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: an int of at least ``least``, refused while the command line is read."""

    def integer(text: str) -> int:  # argparse names the type by this name: "invalid integer value"
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return integer


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="run every notebook through papermill at one profile, then write results/REPORT.md")
    parser.add_argument("--profile", choices=TRAINED_PROFILES, default=None,
                        help="default: proxy when a GPU is present, smoke otherwise")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these notebooks (names without .ipynb)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the notebook's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("-p", "--param", action="append", type=parse_override, default=[],
                        metavar="NAME=VALUE",
                        help="extra notebook parameter (VALUE parsed as JSON, else a string); repeatable")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("-j", "--jobs", type=_count(1), default=1,
                        help="notebooks run at once (default 1); notebooks on one GPU time-slice it, "
                             "so this overlaps their launch gaps and CPU work rather than multiplying speed")
    parser.add_argument("--train-workers", type=_count(0), default=0, metavar="K",
                        help="also do the tables' trainings (dense and classification) in K processes beside "
                             "the notebooks (default 0: each notebook trains its own rows in turn)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs to the log")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="list the trainings it would do (what is not stored), with wall-time hints from "
                             "stored runs, and run nothing")
    parser.set_defaults(func=_reproduce_command)


def _reproduce_command(args: argparse.Namespace) -> int:
    profile = args.profile or default_profile()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.dry_run:
            print(describe_plan(*plan(profile, args.only, args.seeds, args.device, dict(args.param))))
            return 0
        outcome = reproduce(profile, args.only, args.seeds, args.device, dict(args.param), args.timeout,
                            log_output=args.verbose, jobs=args.jobs, train_workers=args.train_workers)
    except (ValueError, KeyError) as error:
        raise SystemExit(f"lvit reproduce: {error.args[0]}") from None  # a KeyError's str() adds quotes
    print(f"report: {outcome.report}")
    for name, dataset in outcome.skipped.items():  # not failures: nothing was tried
        print(skip_note(name, dataset, profile))
    if outcome.failures:
        print(f"{len(outcome.failures)} notebook(s) failed:")
        for failure in outcome.failures:
            print(f"  {failure.notebook}: {failure.error}\n    see {failure.output}")
        return 1
    return 0
