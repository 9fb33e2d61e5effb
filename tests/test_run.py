"""run_experiment: rows with provenance, reuse of stored (row, seed) pairs, bad input refused up front."""

import json

import pytest

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


def test_wrong_recipe_types_and_keys_are_refused(monkeypatch):
    with pytest.raises(TypeError, match="epochs='2' must be int"):
        recipes.validate_recipe({"epochs": "2"})
    with pytest.raises(TypeError, match="deterministic=1 must be bool"):
        recipes.validate_recipe({"deterministic": 1})
    with pytest.raises(TypeError, match="lr=True must be int or float, got bool"):
        recipes.validate_recipe({"lr": True})
    with pytest.raises(ValueError, match="unknown recipe keys \\['epoch'\\]; valid keys: .*epochs"):
        recipes.validate_recipe({"epoch": 3})
    for profiles in recipes.PROFILES_BY_TASK.values():
        for name, recipe in profiles.items():
            recipes.validate_recipe(recipe, name)


def test_model_overrides_keep_depth_and_scale_small_models():
    smoke = recipes.CLASSIFICATION_PROFILES["smoke"]
    tiny = recipes.model_overrides("localvit_tiny", "classification", smoke)
    small = recipes.model_overrides("deit_small_patch16_224", "classification", smoke)
    assert tiny["embed_dim"] == smoke["width"] and small["embed_dim"] == 2 * smoke["width"]
    assert "depth" not in tiny  # placement rows index blocks 1-12
    assert recipes.model_overrides(
        "deit_tiny_patch16_224", "classification", recipes.CLASSIFICATION_PROFILES["paper"]
    ) == {"num_classes": 1000, "drop_path_rate": 0.1, "img_size": 224, "patch_size": 16}


def test_dense_smoke_run_pretrains_backbone_once_as_artifact_with_provenance(tmp_path, monkeypatch):
    kwargs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data", rows=["DPT-Hybrid"])
    df = run_experiment("dpt_segmentation", "smoke", seeds=[0], **kwargs)
    assert set(df["metric"]) == {"pixel_accuracy", "mean_iou"}
    assert df["value"].between(0, 100).all()
    folder = tmp_path / "results" / "smoke" / "artifacts"
    artifacts = sorted(p for p in folder.iterdir() if p.suffix != ".lock")
    assert [p.suffix for p in artifacts] == [".json", ".pt"]  # the proxy's stand-in backbone: LocalViT-T
    info = json.loads(artifacts[0].read_text())
    assert info["arch"] == "localvit_tiny" and len(info["config_hash"]) == 64 and info["history"]
    stamp = artifacts[1].stat().st_mtime_ns
    run_experiment("dpt_segmentation", "smoke", seeds=[1], **kwargs)  # a new seed reuses the backbone
    assert artifacts[1].stat().st_mtime_ns == stamp
    import lvit

    monkeypatch.setattr(lvit, "__version__", "0.0.0-older")  # other code: the backbone is pretrained anew
    run_experiment("dpt_segmentation", "smoke", seeds=[2], **kwargs)
    assert len([p for p in folder.iterdir() if p.suffix == ".pt"]) == 2


def _distinct_models(*names):
    """Distinct (model, kwargs) pairs the experiments declare: a training is shared exactly among these."""
    from lvit.experiments import get_experiment

    return {(r.model, tuple(sorted(r.model_kwargs.items()))) for n in names for r in get_experiment(n).rows
            if r.model}


def test_pending_shared_trainings_are_distinct_and_notebooks_reuse_them(tmp_path, monkeypatch):
    from lvit.engine.run import pending_shared_trainings, train_shared

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    names = ["localvit_placement", "localvit_activation", "dpt_read_ablation"]  # dense: not shared, skipped
    distinct = len(_distinct_models("localvit_placement", "localvit_activation"))
    assert len(pending_shared_trainings(names, "smoke", 1, "cpu", **dirs)) == distinct
    assert len(pending_shared_trainings(names, "smoke", 2, "cpu", **dirs)) == 2 * distinct  # per seed

    placement = pending_shared_trainings(["localvit_placement"], "smoke", 1, "cpu", **dirs)
    for training in placement:
        train_shared(training)
    left = pending_shared_trainings(names, "smoke", 1, "cpu", **dirs)
    assert len(placement) == 5 and len(left) == distinct - 5  # what placement shares with activation is done

    def must_not_train(*args, **kw):
        raise AssertionError("a training done beforehand was done again")

    monkeypatch.setattr(runner, "train", must_not_train)
    df = run_experiment("localvit_placement", "smoke", seeds=1, **dirs)
    assert set(df["row"]) == {r.label for r in resolve("localvit_placement", "smoke", None)[2]}
    assert df["shared_run"].str.len().eq(16).all()
    assert pending_shared_trainings(["localvit_placement"], "smoke", 1, "cpu", **dirs) == []
    import lvit

    monkeypatch.setattr(lvit, "__version__", "0.0.0-older")  # runs stored by other code are not reused
    assert len(pending_shared_trainings(["localvit_placement"], "smoke", 1, "cpu", **dirs)) == 5


def test_reproduce_trains_shared_runs_in_worker_processes(tmp_path):
    from tqdm import tqdm

    from lvit.engine.run import pending_shared_trainings
    from lvit.reproduce import _shared_trainings, validate_parameters

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    checked = validate_parameters("smoke", 1, "cpu", **{k: str(v) for k, v in dirs.items()})
    names = ["localvit_placement"]
    assert len(pending_shared_trainings(names, "smoke", 1, "cpu", **dirs)) == 5
    with tqdm(disable=True) as bar, _shared_trainings(names, 1, checked, False, 2, bar):
        pass  # the notebooks would run here; leaving waits for the two spawned workers
    assert pending_shared_trainings(names, "smoke", 1, "cpu", **dirs) == []
    runs = list((dirs["results_dir"] / "smoke" / "runs").glob("*.json"))
    assert len(runs) == 5 and all(json.loads(p.read_text())["history"] for p in runs)


def test_pending_trainings_start_with_the_models_whose_stored_runs_took_longest(tmp_path):
    from lvit.engine.run import pending_shared_trainings

    dirs = dict(results_dir=tmp_path / "results", data_root=tmp_path / "data")
    runs = dirs["results_dir"] / "smoke" / "runs"
    runs.mkdir(parents=True)
    walls = [("localvit_tiny", 5.0), ("deit_tiny_patch16_224", 50.0), ("localvit_tiny", 7.0)]
    for i, (model, wall) in enumerate(walls):  # runs of other code: hints for the order, never reused
        (runs / f"older{i}.json").write_text(json.dumps({"model": model, "wall_s": wall, "history": []}))
    models = [t.model for t in pending_shared_trainings(["localvit_activation"], "smoke", 1, "cpu", **dirs)]
    assert models == ["deit_tiny_patch16_224"] + ["localvit_tiny"] * 6 + ["localvit_tiny_se4"]  # no hint
