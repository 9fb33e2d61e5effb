"""run_experiment: rows with provenance, reuse of stored (row, seed) pairs, bad input refused up front."""

import json
import subprocess
import threading

import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from lvit import results as store
from lvit.engine import run as runner
from lvit.engine.run import resolve, run_experiment
from lvit.experiments import recipes


def test_smoke_run_writes_rows_with_provenance_and_reuses_them(tmp_path, monkeypatch):
    kwargs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data", rows=["DeiT-T"])
    df = run_experiment("localvit_curves", "smoke", seeds=[0], **kwargs)
    assert set(df["metric"]) == {"top1", "train_loss"}
    assert (df["row"] == "DeiT-T").all() and (df["seed"] == 0).all() and (df["profile"] == "smoke").all()
    top1 = df.loc[df["metric"] == "top1", "value"].item()
    assert 0.0 <= top1 <= 100.0
    assert df["config_hash"].str.len().eq(64).all() and df["git_sha"].notna().all()
    assert df["device"].str.startswith("cpu").all() and (df["wall_s"] > 0).all()
    history = tmp_path / "results" / "smoke" / "histories" / "localvit_curves" / "deit-t__seed0.csv"
    assert history.exists()
    assert not (tmp_path / "results" / "smoke" / "checkpoints" / "localvit_curves" / "deit-t__seed0").exists()

    def must_not_train(*args, **kw):
        raise AssertionError("a stored (row, seed) with the same config was retrained")

    monkeypatch.setattr(runner, "_run_row", must_not_train)
    again = run_experiment("localvit_curves", "smoke", seeds=[0], **kwargs)
    assert again.equals(df)
    with pytest.raises(AssertionError, match="retrained"):  # a new seed is work to do
        run_experiment("localvit_curves", "smoke", seeds=[1], **kwargs)


def test_a_row_declared_by_two_tables_trains_once_and_reads_the_same_numbers(tmp_path, monkeypatch):
    kwargs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data", seeds=[0])
    first = run_experiment("localvit_curves", "smoke", rows=["DeiT-T"], **kwargs)
    trainings = []
    fake_history = [{"epoch": 1, "train_loss": 9.0, "val_top1": 42.0, "val_loss": 9.0}]
    monkeypatch.setattr(runner, "train", lambda *a, **k: trainings.append(a) or fake_history)
    second = run_experiment("localvit_activation", "smoke", rows=["DeiT-T"], **kwargs)
    assert trainings == []  # activation's DeiT-T is curves' DeiT-T: same model, kwargs, recipe and seed
    top1 = [df.set_index("metric").loc["top1", ["value", "shared_run", "wall_s"]] for df in (first, second)]
    assert top1[0].equals(top1[1]) and len(top1[0]["shared_run"]) == 16

    again = run_experiment("localvit_activation", "smoke", rows=["DeiT-T"], reuse=False, **kwargs)
    assert len(trainings) == 1  # reuse=False trains again, whatever is shared
    assert again.set_index("metric").loc["top1", "value"] == 42.0


def test_unknown_experiment_row_profile_are_refused_with_valid_choices():
    with pytest.raises(KeyError, match="valid experiments: .*localvit_activation"):
        resolve("localvit_nope", "smoke", None)
    with pytest.raises(KeyError, match="valid profiles: smoke, proxy, paper"):
        resolve("localvit_activation", "quick", None)
    with pytest.raises(KeyError, match="valid rows: DeiT-T, ReLU6"):
        resolve("localvit_activation", "smoke", ["ReLU7"])
    with pytest.raises(ValueError, match="published-only"):
        resolve("dpt_segmentation", "smoke", ["OCNet (ResNet101)"])


def test_lvit_run_answers_a_mistyped_name_with_a_message_and_the_closest_valid_one():
    from lvit.cli import main

    with pytest.raises(SystemExit, match=r"^lvit run: unknown experiment 'localvit_mian' \(did you mean "
                                         r"'localvit_main'\?\); valid experiments: "):
        main(["run", "localvit_mian"])
    with pytest.raises(SystemExit, match=r"^lvit run: .* row 'LocalViT-X' \(did you mean 'LocalViT-T'\?\)"):
        main(["run", "localvit_main", "--rows", "LocalViT-X"])


def test_lvit_run_refuses_bad_seeds_devices_paths_and_absent_datasets_in_one_line(tmp_path, monkeypatch):
    from lvit.cli import main

    monkeypatch.setattr(runner, "_run_all", lambda *a, **k: pytest.fail("bad input reached the training"))
    base = ["run", "localvit_placement", "--results-dir", str(tmp_path / "results")]
    for seeds in (["0"], ["1", "-1"]):
        with pytest.raises(SystemExit, match=rf"^lvit run: --seeds {' '.join(seeds)}: give a count N >= 1"):
            main([*base, "--seeds", *seeds])
    with pytest.raises(SystemExit, match=r"^lvit run: unknown or unavailable device 'gpu' \(did you mean"):
        main([*base, "--device", "gpu"])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit, match=r"^lvit run: .*a_file is a file, not a directory$"):
        main(["run", "localvit_placement", "--results-dir", str(a_file)])
    with pytest.raises(ValueError, match="list of seeds >= 0"):  # the API refuses them too
        run_experiment("localvit_placement", "smoke", [1, -1], results_dir=tmp_path)
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"^lvit run: missing .*imagenet/train; expected layout:"):
        main([*base, "--profile", "paper", "--data-root", str(tmp_path / "no_data"), "--rows", "Low 1~4"])
    for split in ("train", "val"):  # a layout that holds too few images for one paper batch
        folder = tmp_path / "tiny" / "imagenet" / split / "n01440764"
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "a.JPEG")
    with pytest.raises(SystemExit, match=r"^lvit run: train set of 1 samples is smaller than one global"):
        main([*base, "--profile", "paper", "--data-root", str(tmp_path / "tiny"), "--rows", "Low 1~4"])


def test_the_torchrun_relaunch_passes_the_seeds_themselves_and_its_failure_is_one_line(tmp_path, monkeypatch):
    from lvit.cli import main

    launched: list[list[str]] = []
    status = [0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(subprocess, "run", lambda command: launched.append(command) or
                        subprocess.CompletedProcess(command, status[0]))  # fmt: skip
    monkeypatch.setattr(runner, "_stored", lambda *a: pd.DataFrame())
    args = ["run", "localvit_placement", "--profile", "paper", "--rows", "Low 1~4",
            "--results-dir", str(tmp_path)]  # fmt: skip
    main([*args, "--seed", "1"])
    assert [runner._relaunch_under_torchrun(p, d) for p, d in [("paper", "auto"), ("paper", "cuda"),
            ("paper", "cuda:1"), ("paper", "cpu"), ("proxy", "auto")]] == [True, True, False, False, False]
    (command,) = launched
    child = command[command.index("lvit.engine.run") + 1:]
    ran: list[list[int]] = []
    monkeypatch.setattr(runner, "_run_all", lambda experiment, recipe, rows, seeds, *rest: ran.append(seeds))
    monkeypatch.setenv("WORLD_SIZE", "1")  # as a rank of the job would parse them
    runner.main(child)
    assert ran == [[1]]  # seed 1 itself, not a count of one
    status[0] = 3
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit, match=r"^lvit run: torchrun exited with status 3"):
        main([*args, "--seed", "1"])


def _rank_of_a_two_rank_run(rank, results_dir, data_root):
    run_experiment("localvit_curves", "smoke", seeds=[0], device="cpu", results_dir=results_dir,
                   data_root=data_root, rows=["DeiT-T"])  # fmt: skip


def test_under_torchrun_a_classification_row_is_one_shared_run_with_weights(tmp_path, monkeypatch,
                                                                            on_two_ranks):
    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    on_two_ranks(_rank_of_a_two_rank_run, *dirs.values())
    rows = store.load_results(dirs["results_dir"], "smoke", "localvit_curves")
    top1 = rows[rows["metric"] == "top1"]
    assert len(top1) == 1  # written once, by rank 0
    (run,) = top1["shared_run"]
    assert store.shared_run_weights_path(dirs["results_dir"], "smoke", run).exists()
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a stored shared run was retrained"))
    again = run_experiment("localvit_activation", "smoke", seeds=[0], rows=["DeiT-T"], **dirs)  # one process
    assert again.loc[again["metric"] == "top1", "value"].item() == top1["value"].item()


def test_a_paper_dense_backbone_starts_from_the_users_imagenet_file_or_is_refused(tmp_path):
    recipe = recipes.SEGMENTATION_PROFILES["paper"]
    kwargs = {"task": "segmentation", "num_classes": 150}
    training = runner.Training("dpt_tiny", kwargs, "segmentation", recipe, 0, "paper", torch.device("cpu"),
                               tmp_path, tmp_path / "data")  # fmt: skip
    refusal = (r"missing .*data/pretrained/vit_tiny_patch16_224\.safetensors "
               r"\(or vit_tiny_patch16_224\.pth\): timm's 'vit_tiny_patch16_224' ImageNet weights")
    with pytest.raises(runner.LayoutError, match=refusal):
        training.build_model()  # it used to train from scratch, silently
    torch.manual_seed(1)
    imagenet = timm.create_model("vit_tiny_patch16_224").state_dict()
    (tmp_path / "data" / "pretrained").mkdir(parents=True)
    torch.save({"model": imagenet}, tmp_path / "data" / "pretrained" / "vit_tiny_patch16_224.pth")
    backbone = training.build_model().backbone.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in imagenet.items() if not k.startswith("head."))
    assert not torch.equal(backbone["head.weight"], imagenet["head.weight"])  # the classifier is not needed


def test_lvit_list_marks_a_profile_whose_dataset_has_no_loader(capsys):
    from lvit.cli import main

    main(["list"])
    listing = capsys.readouterr().out
    assert "profiles: smoke, proxy, paper (no loader for 'mix6' yet)" in listing  # the zero-shot table
    assert listing.count("no loader") == 1 and "profiles: smoke, proxy, paper\n" in listing


def test_seeds_left_out_are_the_experiments_declared_count(tmp_path, monkeypatch):
    ran: list[list[int]] = []
    monkeypatch.setattr(runner, "_run_all", lambda experiment, recipe, rows, seeds, *rest: ran.append(seeds))
    for profile in ("proxy", "smoke"):
        run_experiment("localvit_placement", profile, results_dir=tmp_path, rows=["All 1~12"])
    assert ran == [[0, 1, 2], [0]]


def test_wrong_recipe_types_and_keys_are_refused(monkeypatch):
    with pytest.raises(TypeError, match="epochs='2' must be int"):
        recipes.validate_recipe({"epochs": "2"})
    with pytest.raises(TypeError, match="deterministic=1 must be bool"):
        recipes.validate_recipe({"deterministic": 1})
    with pytest.raises(TypeError, match="lr=True must be int or float, got bool"):
        recipes.validate_recipe({"lr": True})
    with pytest.raises(ValueError, match="unknown recipe keys \\['epoch'\\]; valid keys: .*epochs"):
        recipes.validate_recipe({"epoch": 3})
    from lvit.experiments import list_experiments

    for experiment in list_experiments():  # every declared recipe is valid
        for name, recipe in experiment.profiles.items():
            recipes.validate_recipe(recipe, f"{experiment.name} {name}")


def test_model_overrides_keep_depth_and_scale_small_models():
    smoke = recipes.CLASSIFICATION_PROFILES["smoke"]
    tiny = recipes.model_overrides("localvit_tiny", "classification", smoke)
    small = recipes.model_overrides("deit_small_patch16_224", "classification", smoke)
    assert tiny["embed_dim"] == smoke["width"] and small["embed_dim"] == 2 * smoke["width"]
    assert "depth" not in tiny  # placement rows index blocks 1-12
    assert recipes.model_overrides(
        "deit_tiny_patch16_224", "classification", recipes.CLASSIFICATION_PROFILES["paper"]
    ) == {"num_classes": 1000, "drop_path_rate": 0.1, "img_size": 224, "patch_size": 16}


def test_dense_smoke_run_pretrains_backbone_once_as_a_shared_run_with_weights(tmp_path, monkeypatch):
    kwargs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data", rows=["DPT-Hybrid"])
    df = run_experiment("dpt_segmentation", "smoke", seeds=[0], **kwargs)
    assert set(df["metric"]) == {"pixel_accuracy", "mean_iou"}
    assert df["value"].between(0, 100).all()
    folder = tmp_path / "results" / "smoke" / "runs"
    (record,) = folder.glob("*.json")  # the only classification run: the stand-in backbone, LocalViT-T
    weights = record.with_suffix(".pt")
    info = json.loads(record.read_text())
    assert info["model"] == "localvit_tiny" and info["seed"] == 0 and info["history"]
    assert len(info["provenance"]["config_hash"]) == 64
    state = torch.load(weights, weights_only=True)
    assert state["cls_token"].shape[-1] == recipes.CLASSIFICATION_PROFILES["smoke"]["width"]
    stamp = weights.stat().st_mtime_ns
    run_experiment("dpt_segmentation", "smoke", seeds=[1], **kwargs)  # a new seed reuses the backbone
    assert weights.stat().st_mtime_ns == stamp

    def must_not_train(*args, **kw):
        raise AssertionError("the backbone pretraining was trained again for the table row it is")

    with monkeypatch.context() as patched:
        patched.setattr(runner, "train", must_not_train)
        table = run_experiment("localvit_main", "smoke", seeds=[0], results_dir=tmp_path / "results",
                               data_root=tmp_path / "data", rows=["LocalViT-T"])
    assert (table["shared_run"] == record.stem).all()
    import lvit

    monkeypatch.setattr(lvit, "__version__", "0.0.0-older")  # other code: the backbone is pretrained anew
    run_experiment("dpt_segmentation", "smoke", seeds=[2], **kwargs)
    assert len(list(folder.glob("*.pt"))) == 2


def test_a_stored_run_without_its_weights_is_trained_again_beside_it_never_over_it(tmp_path, monkeypatch):
    """As on a fresh machine, where committed records have no weights: a dense row that needs the backbone's
    weights trains its pretraining as a new run; the first record, which table rows cite, is untouched; each
    dense row names the run its backbone came from; a table row reads the first record without training."""
    from lvit.engine.run import backbone_pretraining, pending_work
    from lvit.experiments import get_experiment

    kwargs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data", rows=["DPT-Hybrid"])
    first_rows = run_experiment("dpt_segmentation", "smoke", seeds=[0], **kwargs)
    folder = tmp_path / "results" / "smoke" / "runs"
    (first,) = folder.glob("*.json")
    assert (first_rows["backbone_run"] == first.stem).all() and (first_rows["shared_run"] == "").all()
    first_text = first.read_text()

    def pretrainings_pending() -> list[str]:
        work = pending_work(["dpt_segmentation"], "smoke", 2, "cpu", tmp_path / "results", tmp_path / "data")
        return [w.desc for w in work if isinstance(w, runner.Training)]

    assert "pretrain localvit_tiny" not in pretrainings_pending()
    first.with_suffix(".pt").unlink()  # weights are not committed
    assert "pretrain localvit_tiny" in pretrainings_pending()

    second_rows = run_experiment("dpt_segmentation", "smoke", seeds=[1], **kwargs)
    (again,) = folder.glob(f"{first.stem}@*.json")
    assert again.with_suffix(".pt").exists() and first.read_text() == first_text
    assert (second_rows["backbone_run"] == again.stem).all()
    stored = store.load_results(tmp_path / "results", "smoke", "dpt_segmentation")
    assert dict(zip(stored["seed"], stored["backbone_run"], strict=True)) == {0: first.stem, 1: again.stem}
    training = runner._training(get_experiment("dpt_segmentation").row("DPT-Hybrid"), "segmentation",
                                recipes.SEGMENTATION_PROFILES["smoke"], 2, "smoke", torch.device("cpu"),
                                tmp_path / "results", tmp_path / "data")  # fmt: skip
    assert runner.run_with_weights(backbone_pretraining(training)) == again.stem

    def must_not_train(*args, **kw):
        raise AssertionError("a table row was trained although its run's record is stored")

    monkeypatch.setattr(runner, "train", must_not_train)
    table = run_experiment("localvit_main", "smoke", seeds=[0], results_dir=tmp_path / "results",
                           data_root=tmp_path / "data", rows=["LocalViT-T"])
    assert (table["shared_run"] == first.stem).all()
    history = json.loads(first_text)["history"]
    assert table.set_index("metric").loc["top1", "value"] == pytest.approx(history[-1]["val_top1"])


def _distinct_models(*names):
    """Distinct (model, kwargs) pairs the experiments declare: a training is shared exactly among these."""
    from lvit.experiments import get_experiment

    return {(r.model, tuple(sorted(r.model_kwargs.items()))) for n in names for r in get_experiment(n).rows
            if r.model}


def test_pending_work_is_distinct_pretrainings_first_and_notebooks_reuse_it(tmp_path, monkeypatch):
    from lvit.engine.run import DenseRun, Training, pending_work, run_pending

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    names = ["localvit_placement", "localvit_activation", "dpt_read_ablation"]
    distinct = len(_distinct_models("localvit_placement", "localvit_activation"))
    pending = pending_work(names, "smoke", 1, "cpu", **dirs)
    # Read's three rows are three dense runs on one backbone (ViT-T, a model no table row trains), whose
    # pretraining comes first: every dense run waits for it
    assert pending[0].model == "vit_tiny_patch16_224" and pending[0].task == "classification"
    assert [(w.rows, w.seed) for w in pending[1:4]] == [(("Ignore",), 0), (("Add",), 0), (("Project",), 0)]
    assert all(isinstance(w, Training) for w in pending[4:]) and len(pending) == 4 + distinct
    two_seeds = pending_work(names, "smoke", 2, "cpu", **dirs)
    assert sum(isinstance(w, DenseRun) for w in two_seeds) == 6 and len(two_seeds) == 1 + 6 + 2 * distinct

    placement = pending_work(["localvit_placement"], "smoke", 1, "cpu", **dirs)
    for work in placement:
        run_pending(work)
    left = pending_work(names, "smoke", 1, "cpu", **dirs)
    assert len(placement) == 5 and len(left) == 4 + distinct - 5  # placement's share of activation: done

    def must_not_train(*args, **kw):
        raise AssertionError("a training done beforehand was done again")

    with monkeypatch.context() as patched:
        patched.setattr(runner, "train", must_not_train)
        df = run_experiment("localvit_placement", "smoke", seeds=1, **dirs)
    assert set(df["row"]) == {r.label for r in resolve("localvit_placement", "smoke", None)[2]}
    assert df["shared_run"].str.len().eq(16).all()
    assert pending_work(["localvit_placement"], "smoke", 1, "cpu", **dirs) == []
    import lvit

    monkeypatch.setattr(lvit, "__version__", "0.0.0-older")  # runs stored by other code are not reused
    assert len(pending_work(["localvit_placement"], "smoke", 1, "cpu", **dirs)) == 5


def test_wall_hints_are_stored_walls_of_the_same_configuration_at_other_seeds(tmp_path):
    from lvit.engine.run import DenseRun, pending_work, run_pending, wall_hints

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    done = pending_work(["localvit_placement"], "smoke", 1, "cpu", **dirs)[0]
    run_pending(done)
    record = store.shared_run_path(tmp_path / "results", "smoke", done.key[:16])
    wall = json.loads(record.read_text())["wall_s"]
    pending = pending_work(["localvit_placement"], "smoke", 2, "cpu", **dirs)
    labels = [(w.desc, w.seed) for w in pending]
    hints = dict(zip(labels, wall_hints(pending, tmp_path / "results", "smoke"), strict=True))
    twin = (done.desc.replace(" s0", " s1"), 1)  # the same row at the seed still to train
    assert hints.pop(twin) == pytest.approx(wall)
    assert len(hints) == 8 and set(hints.values()) == {None}  # other kwargs: nothing stored to go by

    # a dense run's hint: per row, the median over its stored seeds, summed over the rows the run trains and
    # evaluates; a row with nothing stored leaves the run without a hint
    def stored(row: str, seed: int, wall_s: float) -> list[dict]:
        origin = store.provenance("smoke", seed, "cpu", {"row": row}, "2026-11-27T00:00:00+00:00", wall_s)
        return [{**origin, "row": row, "metric": metric, "value": 0.1, "split": "val", "epoch": 1}
                for metric in ("mean_abs_rel", "eth3d_abs_rel")]

    store.append_results(tmp_path / "results", "smoke", "dpt_inference_resolution",
                         stored("384", 0, 100.0) + stored("384", 1, 300.0) + stored("384", 2, 150.0)
                         + stored("448", 0, 4.0))  # fmt: skip

    def dense(*rows: str) -> DenseRun:
        return DenseRun("dpt_inference_resolution", rows, 3, "smoke", "cpu", str(tmp_path / "results"), "")

    hint_pair, hint_unstored = wall_hints([dense("384", "448"), dense("384", "512")], tmp_path / "results",
                                          "smoke")  # fmt: skip
    assert hint_pair == pytest.approx(150.0 + 4.0) and hint_unstored is None


def test_a_dense_run_done_by_a_worker_is_read_by_the_notebook(tmp_path, monkeypatch):
    from lvit.engine.run import DenseRun, pending_work, run_pending

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    pending = pending_work(["dpt_inference_resolution"], "smoke", 1, "cpu", **dirs)
    sizes = tuple(r.label for r in resolve("dpt_inference_resolution", "smoke", None)[2])
    assert [w.rows for w in pending if isinstance(w, DenseRun)] == [sizes]  # one training, every size
    for work in pending:
        run_pending(work)
    assert pending_work(["dpt_inference_resolution"], "smoke", 1, "cpu", **dirs) == []

    def must_not_train(*args, **kw):
        raise AssertionError("a dense run done by a worker was done again")

    monkeypatch.setattr(runner, "train", must_not_train)
    df = run_experiment("dpt_inference_resolution", "smoke", seeds=1, **dirs)
    assert set(df["row"]) == set(sizes) and df["value"].notna().all()


def test_two_processes_asking_for_one_dense_run_train_it_once(tmp_path, monkeypatch):
    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    # pretrain the backbone first, so that the two threads below contend for one dense training only
    run_experiment("dpt_read_ablation", "smoke", seeds=[0], rows=["Project"], **dirs)
    real_train, calls = runner.train, []

    def counted(*args, **kw):
        calls.append(args[0])
        return real_train(*args, **kw)

    monkeypatch.setattr(runner, "train", counted)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        run_experiment("dpt_read_ablation", "smoke", seeds=[0], rows=["Ignore"], **dirs))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1  # the second waited on the run's lock, then read what the first stored
    assert len(results) == 2 and results[0].equals(results[1])


def test_reproduce_does_pending_trainings_in_worker_processes(tmp_path):
    from tqdm import tqdm

    from lvit.engine.run import pending_work
    from lvit.reproduce import _pending_work_in_workers, validate_parameters

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    checked = validate_parameters("smoke", 1, "cpu", **{k: str(v) for k, v in dirs.items()})
    names = ["localvit_placement", "dpt_segmentation"]
    # placement's 5 rows, 2 dense runs and their 2 backbones, of which LocalViT-T is placement's "All 1~12"
    assert len(pending_work(names, "smoke", 1, "cpu", **dirs)) == 5 + 2 + 2 - 1
    with tqdm(disable=True) as bar, _pending_work_in_workers(names, 1, checked, False, 2, bar):
        pass  # the notebooks would run here; leaving waits for the two spawned workers
    assert pending_work(names, "smoke", 1, "cpu", **dirs) == []
    runs = list((dirs["results_dir"] / "smoke" / "runs").glob("*.json"))
    assert len(runs) == 5 + 1 and all(json.loads(p.read_text())["history"] for p in runs)
    dense = pd.read_csv(dirs["results_dir"] / "smoke" / "dpt_segmentation.csv")
    assert set(dense["row"]) == {"DPT-Hybrid", "DPT-Large"}


def test_pending_trainings_go_seed_by_seed_slowest_model_first(tmp_path):
    from lvit.engine.run import pending_work

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    runs = dirs["results_dir"] / "smoke" / "runs"
    runs.mkdir(parents=True)
    walls = [("localvit_tiny", 5.0), ("deit_tiny_patch16_224", 50.0), ("localvit_tiny", 7.0)]
    for i, (model, wall) in enumerate(walls):  # runs of other code: hints for the order, never reused
        (runs / f"older{i}.json").write_text(json.dumps({"model": model, "wall_s": wall, "history": []}))
    models = [t.model for t in pending_work(["localvit_activation"], "smoke", 1, "cpu", **dirs)]
    assert models == ["deit_tiny_patch16_224"] + ["localvit_tiny"] * 6 + ["localvit_tiny_se4"]  # no hint
    # several seeds: every row at seed 0 before any at seed 1, so that a deadline leaves no row unseeded
    order = [(t.seed, t.model) for t in pending_work(["localvit_activation"], "smoke", 2, "cpu", **dirs)]
    assert order == [(seed, model) for seed in (0, 1) for model in models]


@pytest.mark.parametrize("profile", ["smoke", "proxy"])
def test_zero_shot_rows_are_scored_on_a_domain_they_never_train_on(profile):
    from lvit.experiments import get_experiment

    experiment, recipe, _ = resolve("dpt_zero_shot_depth", profile, None)
    assert recipe == dict(get_experiment(experiment.name).profiles[profile])  # one declaration, read by all
    held_out = set(recipe["metric_domains"].values())
    assert held_out == {"tabletop"} and not held_out & set(recipe["train_domains"])
    assert set(recipe["metric_domains"]) <= {m.name for m in experiment.metrics}


def test_a_training_runs_at_its_recipes_cpu_thread_count_whoever_calls_it(tmp_path, monkeypatch):
    from lvit.engine.run import pending_work

    threads_seen = []
    monkeypatch.setattr(runner, "train", lambda *args, **kw: threads_seen.append(torch.get_num_threads()))
    (training, *_) = pending_work(["localvit_placement"], "smoke", 1, "cpu", tmp_path / "results", tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a reproduce worker's default, not the smoke recipe's
    try:
        training.run(tmp_path / "ckpt")  # the patched train returns no history: nothing is stored
        assert threads_seen == [training.recipe["cpu_threads"]] == [1]  # float sums depend on the count
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_trained_model_is_the_one_whose_validation_top1_was_stored(tmp_path):
    from lvit.engine.run import trained_model
    from lvit.engine.tasks import build_task

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    df = run_experiment("localvit_placement", "smoke", seeds=[0], rows=["High 9~12"], **dirs)
    model = trained_model("localvit_placement", "High 9~12", "smoke", 0, dirs["results_dir"])
    assert not model.training
    recipe = resolve("localvit_placement", "smoke", None)[1]
    val = runner._dataset(recipe, "val", dirs["data_root"], torch.device("cpu"))
    measured = build_task("classification", recipe).evaluate(model, val, torch.device("cpu"), 16)
    (record,) = (dirs["results_dir"] / "smoke" / "runs").glob("*.json")
    last = json.loads(record.read_text())["history"][-1]
    # the loss, not only top-1: a smoke model is at chance, and another model could match its top-1
    assert measured["loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert measured["top1"] == pytest.approx(df.loc[df["metric"] == "top1", "value"].item(), abs=1e-9)

    with pytest.raises(KeyError, match="stored: High 9~12 \\(seed 0\\)"):
        trained_model("localvit_placement", "High 9~12", "smoke", 1, dirs["results_dir"])
    run_experiment("dpt_read_ablation", "smoke", seeds=[0], rows=["Add"], **dirs)
    with pytest.raises(ValueError, match="not a shared classification run"):
        trained_model("dpt_read_ablation", "Add", "smoke", 0, dirs["results_dir"])
    for weights in (dirs["results_dir"] / "smoke" / "runs").glob("*.pt"):
        weights.unlink()
    with pytest.raises(FileNotFoundError, match="reuse=False"):
        trained_model("localvit_placement", "High 9~12", "smoke", 0, dirs["results_dir"])


def test_run_experiment_returns_the_collapse_flag_of_each_run(tmp_path):
    from lvit.results import history_path

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    df = run_experiment("dpt_read_ablation", "smoke", seeds=[0], rows=["Add"], **dirs)
    assert not df["collapsed"].any()
    # the same stored run, had its last validation seen one constant map per image
    path = history_path(dirs["results_dir"], "smoke", "dpt_read_ablation", "Add", 0)
    history = pd.read_csv(path)
    at_init = history["init_constant_fraction"]  # measured on the untrained model, first entry only
    assert at_init.iloc[1:].isna().all() and 0.0 <= at_init.iloc[0] <= 1.0
    assert df["dead_at_init"].tolist() == [at_init.iloc[0] == 1.0] * len(df)
    history.loc[history.index[-1], "val_constant_fraction"] = 1.0
    history.to_csv(path, index=False)
    again = run_experiment("dpt_read_ablation", "smoke", seeds=[0], rows=["Add"], **dirs)
    assert again["collapsed"].all() and again["value"].tolist() == df["value"].tolist()


def test_a_training_passes_the_gpu_admission_gate_with_its_declared_need(tmp_path, monkeypatch):
    import contextlib

    gate = []

    @contextlib.contextmanager
    def recording_gate(device, need_gib):
        entry = {"device": device, "need": need_gib, "settled": 0}
        gate.append(entry)
        yield lambda: entry.__setitem__("settled", entry["settled"] + 1)

    monkeypatch.setattr(runner, "admitted", recording_gate)
    monkeypatch.setitem(recipes.GPU_MEMORY_GIB, ("classification", "smoke"), 2.5)
    run_experiment("localvit_curves", "smoke", seeds=[0], results_dir=tmp_path / "results",
                   data_root=tmp_path / "data", rows=["DeiT-T"])
    assert gate == [{"device": torch.device("cpu"), "need": 2.5, "settled": 1}]  # released after step one


def test_every_proxy_task_declares_the_gpu_memory_its_trainings_wait_for():
    declared = {task for task, profile in recipes.GPU_MEMORY_GIB if profile == "proxy"}
    assert declared == set(runner.TRAINING_TASKS)


@pytest.mark.parametrize(("free", "kept"), [(100.0, True), (1.0, False)])
def test_an_idle_worker_drops_its_cached_data_only_when_the_gpu_is_short_of_memory(monkeypatch, free, kept):
    cache = {"scenes": object()}
    monkeypatch.setattr(runner, "_DATA_CACHE", cache)
    runner.release_worker_memory(torch.device("cuda", 0), free_memory=lambda device: free)
    assert ("scenes" in cache) == kept
    runner.release_worker_memory(torch.device("cpu"), free_memory=lambda device: 0.0)
    assert ("scenes" in cache) == kept  # host memory: nothing to hand back
