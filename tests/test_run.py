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


def test_dense_smoke_run_pretrains_backbone_once_as_artifact_with_provenance(tmp_path):
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
