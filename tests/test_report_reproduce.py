"""Parameter checks of lvit.reproduce: typos and unknown values stop with the valid choices."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from lvit.experiments import PROFILES
from lvit.reproduce import check_parameter_names, project_root, validate_parameters

PARAMETERS_CELL = 'profile: str = "smoke"  # smoke|proxy|paper\nseeds: int = 1  # number of seeds\n'


def _notebook(path, validate: bool = False):
    cells = [nbformat.v4.new_code_cell(PARAMETERS_CELL, metadata={"tags": ["parameters"]})]
    if validate:
        cells.append(nbformat.v4.new_code_cell(
            "from lvit.reproduce import validate_parameters\n"
            "validate_parameters(profile=profile, seeds=seeds)"))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_unknown_profile_lists_valid_profiles():
    expected = r"unknown profile 'smok' \(did you mean 'smoke'\?\); valid profiles: " + ", ".join(PROFILES)
    with pytest.raises(ValueError, match=expected):
        validate_parameters(profile="smok", seeds=1)


def test_unknown_device_and_bad_seeds():
    with pytest.raises(ValueError, match="valid devices here: auto, cpu"):
        validate_parameters(profile="smoke", seeds=1, device="gpu")
    with pytest.raises(ValueError, match="int >= 0"):
        validate_parameters(profile="smoke", seeds=-1)
    with pytest.raises(ValueError, match="int >= 0"):
        validate_parameters(profile="smoke", seeds=True)


def test_seeds_zero_takes_the_experiments_declared_count_at_the_profile():
    def chosen(profile, experiment):
        return validate_parameters(profile=profile, seeds=0, device="cpu", experiment=experiment).seeds

    assert chosen("proxy", "localvit_placement") == [0, 1, 2]  # every table: mean ± std over 3
    assert chosen("proxy", "dpt_read_ablation") == [0, 1, 2]
    assert chosen("smoke", "localvit_placement") == [0]
    assert chosen("smoke", "dpt_segmentation") == [0]
    explicit = validate_parameters(profile="proxy", seeds=2, device="cpu", experiment="localvit_placement")
    assert explicit.seeds == [0, 1]


def test_paths_resolve_from_project_root_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = validate_parameters(profile="smoke", seeds=2, device="cpu", results_dir="results")
    assert params.results_dir == project_root() / "results"
    assert params.data_root == project_root() / "data"
    assert params.figures_dir == project_root() / "results" / "smoke" / "figures"
    assert params.seeds == [0, 1]


def test_misspelled_parameter_name_fails_before_running(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb")
    expected = r"'profil' \(did you mean 'profile'\?\)\nvalid parameters: profile, seeds"
    with pytest.raises(ValueError, match=expected):
        check_parameter_names(notebook, {"profil": "proxy"})
    check_parameter_names(notebook, {"profile": "proxy", "seeds": 3})  # declared names pass


def test_papermill_run_with_unknown_profile_fails_with_valid_choices(tmp_path):
    notebook = _notebook(tmp_path / "nb.ipynb", validate=True)
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters={"profile": "nope"},
                                   kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    assert failure.value.ename == "ValueError"
    assert f"valid profiles: {', '.join(PROFILES)}" in failure.value.evalue


def test_reproduce_runs_notebooks_concurrently_report_last_alone_under_results_root(monkeypatch, tmp_path):
    import threading
    import time

    import lvit.report
    from lvit import reproduce as module

    running, peak, order, lock = set(), [0], [], threading.Lock()

    output_dirs = set()

    def fake_run(name, parameters, output_dir, timeout, log_output):
        output_dirs.add(output_dir)
        with lock:
            running.add(name)
            peak[0] = max(peak[0], len(running))
            order.append((name, frozenset(running)))
        time.sleep(0.2)
        with lock:
            running.discard(name)
        if name == "localvit_placement":
            raise RuntimeError("boom")

    monkeypatch.setattr(module, "run_notebook", fake_run)
    monkeypatch.setattr(lvit.report, "write_report", lambda root: Path(root) / "REPORT.md")
    chosen = ["localvit_placement", "localvit_activation", "localvit_curves", "report"]
    elsewhere = tmp_path / "elsewhere"
    outcome = module.reproduce("smoke", only=chosen, device="cpu", jobs=3,
                               overrides={"results_dir": str(elsewhere)})
    assert peak[0] == 3  # the three table notebooks ran at once
    assert order[-1] == ("report", frozenset({"report"}))  # then the report, alone
    assert [(f.notebook, f.error) for f in outcome.failures] == [("localvit_placement", "RuntimeError: boom")]
    # executed notebooks and the report follow the notebooks' results root, not <project>/results
    assert output_dirs == {elsewhere / "smoke" / "notebooks"}
    assert outcome.report == elsewhere / "REPORT.md"
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        module.reproduce("smoke", only=chosen, device="cpu", jobs=0)


def test_dry_run_lists_the_trainings_in_order_and_runs_nothing(tmp_path, capsys):
    from lvit.cli import main

    results = tmp_path / "results"
    command = ["reproduce", "--profile", "smoke", "--device", "cpu", "--dry-run",
               "--only", "dpt_read_ablation", "report", "-p", f"results_dir={results}"]  # fmt: skip
    assert main(command + ["--seeds", "2"]) == 0
    listed = re.findall(r"^ *\d+\. (\w+) +(\S+) +(.+?) +seed (\d+)", capsys.readouterr().out, re.MULTILINE)
    # the backbone's pretraining first (every dense run waits for it), then each row at each seed; the report
    # notebook trains nothing
    assert listed == [("train", "vit_tiny_patch16_224", "pretrain vit_tiny_patch16_224", "0")] + [
        ("dense", "dpt_read_ablation", row, seed) for seed in "01" for row in ("Ignore", "Add", "Project")]
    assert not results.exists()  # nothing trained, stored or created
    with pytest.raises(SystemExit, match="a dry run lists whole tables"):
        main([argument for argument in command if argument != "report"] + ["-p", 'rows=["Add"]'])
    with pytest.raises(SystemExit):  # what the real run would refuse, refused as the command line is read
        main(command + ["--jobs", "0"])
    assert "argument -j/--jobs: must be >= 1, got 0" in capsys.readouterr().err


def test_a_table_whose_dataset_has_no_loader_is_skipped_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    from lvit import reproduce as module
    from lvit.cli import main

    results = tmp_path / "results"
    command = ["reproduce", "--profile", "paper", "--device", "cpu", "--only", "dpt_zero_shot_depth",
               "dpt_segmentation", "-p", f"results_dir={results}"]
    assert main([*command, "--dry-run"]) == 0  # it used to refuse the whole command over MIX 6
    out = capsys.readouterr().out
    assert "skipped dpt_zero_shot_depth: it reads 'mix6' at paper, for which lvit has no loader" in out
    assert re.findall(r"\d+\. dense (\w+)", out) == ["dpt_segmentation"] * 2  # DPT-Hybrid, DPT-Large
    ran: list[str] = []
    monkeypatch.setattr(module, "run_notebook", lambda name, *args: ran.append(name))
    outcome = module.reproduce("paper", only=["dpt_zero_shot_depth", "dpt_segmentation"], device="cpu",
                               overrides={"results_dir": str(results)})
    assert ran == ["dpt_segmentation"] and not outcome.failures
    assert outcome.skipped == {"dpt_zero_shot_depth": "mix6"}
