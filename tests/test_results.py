"""Result store: atomic writes, append/replace semantics, round trips, provenance and histories."""

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from lvit import results
from lvit.results import (
    COLUMNS,
    append_results,
    config_hash,
    latest_results,
    load_histories,
    load_results,
    provenance,
    reusable_results,
    summarize,
    write_history,
)

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
CONFIG = {"epochs": 2, "lr": 5e-4, "model": "localvit_tiny"}


@pytest.fixture(scope="module")
def prov():
    return provenance("smoke", 0, "cpu", CONFIG, START, 12.5)


def record(prov, row="DeiT-T", metric="top1", value=50.0, seed=0, split="val", started_at=START, **extra):
    return {**prov, "seed": seed, "started_at": started_at, "row": row, "metric": metric,
            "value": value, "split": split, "epoch": 2, **extra}  # fmt: skip


def test_provenance_fields(prov):
    import timm
    import torch

    import lvit

    per_row = {"experiment", "row", "metric", "value", "split", "epoch", "shared_run", "backbone_run"}
    assert set(prov) == set(COLUMNS) - per_row
    assert prov["torch"] == torch.__version__ and prov["timm"] == timm.__version__
    assert prov["lvit"] == lvit.__version__
    assert prov["started_at"] == "2026-01-02T03:04:05+00:00"
    assert prov["device"].startswith("cpu (")
    assert prov["config_hash"] == config_hash(CONFIG)
    assert isinstance(prov["dirty"], bool)
    assert len(prov["git_sha"]) == 40 or prov["git_sha"] == "unknown"
    with pytest.raises(ValueError, match="valid profiles: smoke, proxy, paper"):
        provenance("tiny", 0, "cpu", CONFIG, START, 1.0)


def test_device_names_the_ranks_a_torchrun_result_came_from(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = results.device_name("cpu")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert results.device_name("cpu") == alone.removesuffix(")") + ", 4 ranks)"
    assert results.device_name("meta") == "meta (4 ranks)"


def test_config_hash_stable_and_order_independent():
    a = config_hash({"lr": 0.001, "model": {"depth": 12, "dim": 192}, "aug": ["mixup", "cutmix"]})
    b = config_hash({"aug": ["mixup", "cutmix"], "model": {"dim": 192, "depth": 12}, "lr": 0.001})
    assert a == b and len(a) == 64
    # the hash of the canonical JSON, computed independently of config_hash
    import hashlib

    assert config_hash({"b": 1, "a": [1, 2]}) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    assert config_hash({"lr": 0.001}) != config_hash({"lr": 0.002})
    assert config_hash({"aug": ["mixup", "cutmix"]}) != config_hash({"aug": ["cutmix", "mixup"]})
    with pytest.raises(TypeError, match="no stable JSON form"):
        config_hash({"fn": object()})


def test_round_trip_and_types(tmp_path, prov):
    recs = [record(prov), record(prov, metric="top5", value=80.25)]
    path = append_results(tmp_path, "smoke", "table1", recs)
    assert path == tmp_path / "smoke" / "table1.csv"
    df = load_results(tmp_path)
    assert list(df.columns) == list(COLUMNS)
    assert df["value"].tolist() == [50.0, 80.25]
    assert df["seed"].tolist() == [0, 0] and df["epoch"].tolist() == [2, 2]
    assert df["experiment"].tolist() == ["table1", "table1"] and df["profile"].tolist() == ["smoke", "smoke"]
    assert df["dirty"].tolist() == [prov["dirty"]] * 2
    assert df["checkpoint_sha256"].tolist() == ["", ""]
    assert df["git_sha"].iloc[0] == prov["git_sha"]


def test_text_columns_stay_text(tmp_path, prov):
    # a git sha made of digits must not come back as a number, an empty split not as NaN
    rec = record({**prov, "git_sha": "0123456789", "checkpoint_sha256": "00ff"}, split="")
    append_results(tmp_path, "smoke", "t", [rec])
    df = load_results(tmp_path, "smoke", "t")
    assert df["git_sha"].iloc[0] == "0123456789"
    assert df["checkpoint_sha256"].iloc[0] == "00ff" and df["split"].iloc[0] == ""


def test_empty_store_has_columns(tmp_path):
    df = load_results(tmp_path / "nothing")
    assert df.empty and list(df.columns) == list(COLUMNS)
    assert load_histories(tmp_path, "smoke", "x").empty
    assert summarize(df).empty


def test_append_preserves_rows_and_rerun_replaces(tmp_path, prov):
    first = [record(prov, row="A", value=1.0), record(prov, row="B", value=2.0)]
    append_results(tmp_path, "smoke", "t", first)
    later = START + timedelta(hours=1)
    append_results(tmp_path, "smoke", "t", [record(prov, row="A", seed=1, value=3.0)])  # new seed: appended
    append_results(tmp_path, "smoke", "t", [record(prov, row="A", value=9.0, started_at=later)])  # rerun
    df = load_results(tmp_path, "smoke", "t")
    values = {(r.row, r.seed): r.value for r in df.itertuples()}
    assert values == {("B", 0): 2.0, ("A", 1): 3.0, ("A", 0): 9.0}
    assert len(df) == 3


def test_profiles_and_experiments_are_separate_files(tmp_path, prov):
    append_results(tmp_path, "smoke", "t1", [record(prov)])
    append_results(tmp_path, "proxy", "t1", [record({**prov, "profile": "proxy"})])
    append_results(tmp_path, "smoke", "t2", [record(prov)])
    assert len(load_results(tmp_path)) == 3
    assert len(load_results(tmp_path, profile="smoke")) == 2
    assert load_results(tmp_path, experiment="t1")["profile"].tolist() == ["smoke", "proxy"]


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, prov, monkeypatch):
    path = append_results(tmp_path, "smoke", "t", [record(prov, row="A")])
    before = path.read_bytes()
    real_to_csv = pd.DataFrame.to_csv

    def crash_mid_write(self, buf, **kwargs):
        real_to_csv(self.iloc[:1], buf, **kwargs)  # part of the rows reach the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        append_results(tmp_path, "smoke", "t", [record(prov, row="B"), record(prov, row="C")])
    assert path.read_bytes() == before
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in {"t.csv", "t.csv.lock"}]
    assert leftovers == []


def test_record_validation_errors(tmp_path, prov):
    rec = record(prov)
    del rec["metric"]
    with pytest.raises(ValueError, match=r"missing columns \['metric'\], unknown columns \[\]"):
        append_results(tmp_path, "smoke", "t", [rec])
    with pytest.raises(ValueError, match=r"unknown columns \['colour'\]"):
        append_results(tmp_path, "smoke", "t", [record(prov, colour="red")])
    with pytest.raises(ValueError, match="finite number"):
        append_results(tmp_path, "smoke", "t", [record(prov, value=math.nan)])
    with pytest.raises(ValueError, match="profile 'smoke' but writing to 'proxy'"):
        append_results(tmp_path, "proxy", "t", [record(prov)])
    with pytest.raises(ValueError, match="repeat a result key"):
        append_results(tmp_path, "smoke", "t", [record(prov), record(prov)])
    with pytest.raises(ValueError, match="valid profiles"):
        append_results(tmp_path, "big", "t", [record(prov)])
    assert not (tmp_path / "smoke" / "t.csv").exists()


def test_latest_and_reusable(prov):
    old = record(prov, value=1.0)
    new = record({**prov, "config_hash": "changed"}, value=2.0, started_at=START + timedelta(days=1))
    df = pd.DataFrame([{**new, "experiment": "t"}, {**old, "experiment": "t"}])
    df["started_at"] = df["started_at"].map(results.utc_timestamp)
    latest = latest_results(df)
    assert latest["value"].tolist() == [2.0]  # newest by started_at, not by position
    assert reusable_results(df, "t", "DeiT-T", "smoke", 0, "changed")["value"].tolist() == [2.0]
    assert reusable_results(df, "t", "DeiT-T", "smoke", 0, prov["config_hash"]).empty  # config changed
    assert reusable_results(df, "t", "DeiT-T", "smoke", 1, "changed").empty


def test_summarize_mean_std_over_seeds(tmp_path, prov):
    recs = [record(prov, seed=s, value=v) for s, v in [(0, 70.0), (1, 72.0), (2, 74.0)]]
    recs.append(record(prov, row="other", value=5.0))
    append_results(tmp_path, "smoke", "t", recs)
    summary = summarize(load_results(tmp_path)).set_index("row")
    # mean (70 + 72 + 74) / 3 = 72; sample std sqrt((4 + 0 + 4) / 2) = 2
    assert summary.loc["DeiT-T", "mean"] == pytest.approx(72.0)
    assert summary.loc["DeiT-T", "std"] == pytest.approx(2.0)
    assert summary.loc["DeiT-T", "n"] == 3
    assert summary.loc["other", "n"] == 1 and math.isnan(summary.loc["other", "std"])


def test_histories_round_trip(tmp_path):
    history = [{"epoch": e, "train_loss": 2.0 - e, "val_top1": 10.0 * e, "lr": 1e-3} for e in range(3)]
    path = write_history(tmp_path, "smoke", "table1", "h-swish + SE-192", 1, history)
    assert path == tmp_path / "smoke" / "histories" / "table1" / "h-swish-se-192__seed1.csv"
    write_history(tmp_path, "smoke", "table1", "DeiT-T", 0, history[:2])
    df = load_histories(tmp_path, "smoke", "table1")
    assert len(df) == 5
    mine = df[df["row"] == "h-swish + SE-192"]
    assert mine["epoch"].tolist() == [0, 1, 2] and mine["val_top1"].tolist() == [0.0, 10.0, 20.0]
    assert set(mine["seed"]) == {1}
    # rewriting a run's history replaces it
    write_history(tmp_path, "smoke", "table1", "DeiT-T", 0, history)
    assert len(load_histories(tmp_path, "smoke", "table1")) == 6


def test_history_validation(tmp_path):
    write_history(tmp_path, "smoke", "t", "DeiT-T", 0, [{"epoch": 0}])
    with pytest.raises(ValueError, match="slug equals"):
        write_history(tmp_path, "smoke", "t", "deit t", 0, [{"epoch": 0}])
    with pytest.raises(ValueError, match="no 'epoch'"):
        write_history(tmp_path, "smoke", "t", "A", 0, [{"loss": 1.0}])
    with pytest.raises(ValueError, match="empty history"):
        write_history(tmp_path, "smoke", "t", "A", 0, [])


def _append_rows(results_dir, prov, worker):
    for i in range(8):
        append_results(results_dir, "smoke", "t", [record(prov, row=f"w{worker}-{i}", value=1 / 3)])


def test_concurrent_appends_lose_no_rows(tmp_path, prov):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_rows, args=(tmp_path, prov, w)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    df = load_results(tmp_path, "smoke", "t")
    assert sorted(df["row"]) == sorted(f"w{w}-{i}" for w in range(2) for i in range(8))
    assert (df["value"] == 1 / 3).all()  # floats survive the CSV exactly


def test_epoch_may_be_empty_for_pretrained_evaluation(tmp_path, prov):
    append_results(tmp_path, "smoke", "t", [record(prov, epoch=None, checkpoint_sha256="ab" * 32)])
    df = load_results(tmp_path, "smoke", "t")
    assert df["epoch"].isna().all() and df["checkpoint_sha256"].iloc[0] == "ab" * 32


def test_git_state_without_git_checks_the_tree_manifest(tmp_path, monkeypatch):
    from lvit import results as store

    (tmp_path / "lvit").mkdir()
    (tmp_path / "lvit" / "a.py").write_text("x = 1\n")
    blob = hashlib.sha1(b"blob 6\0x = 1\n").hexdigest()  # git's object hash: header, NUL, content
    assert store._blob_sha(tmp_path / "lvit" / "a.py") == blob
    (tmp_path / store.TREE_MANIFEST).write_text(json.dumps({"sha": "ab" * 20, "files": {"lvit/a.py": blob}}))
    monkeypatch.setattr(store, "_git", lambda *args: None)
    monkeypatch.setattr(store, "_REPO_ROOT", tmp_path)
    assert store.git_state() == ("ab" * 20, False)  # every tracked file as committed
    manifest = {"lvit/a.py": blob, "results/proxy/t.csv": "00" * 20}
    (tmp_path / store.TREE_MANIFEST).write_text(json.dumps({"sha": "ab" * 20, "files": manifest}))
    assert store.git_state() == ("ab" * 20, False)  # results a run appends to are not code
    (tmp_path / "lvit" / "a.py").write_text("x = 2\n")
    assert store.git_state() == ("ab" * 20, True)  # an edited file
    (tmp_path / "lvit" / "a.py").unlink()
    assert store.git_state() == ("ab" * 20, True)  # a deleted file
    monkeypatch.setattr(store, "_git", lambda *args: "" if args[0] == "status" else "cd" * 20)
    assert store.git_state() == ("cd" * 20, False)  # a manifest that does not match: git decides
    (tmp_path / "lvit" / "a.py").write_text("x = 1\n")
    assert store.git_state() == ("ab" * 20, False)  # a matching manifest wins over a stale .git
    monkeypatch.setattr(store, "_git", lambda *args: None)
    (tmp_path / store.TREE_MANIFEST).unlink()
    assert store.git_state() == ("unknown", True)  # nothing to vouch for the code


def test_tree_manifest_matches_git_for_this_checkout(tmp_path, monkeypatch):
    from lvit import results as store

    sha, dirty = store.git_state()
    if dirty:
        pytest.skip("needs a clean checkout")
    path = store.write_tree_manifest(tmp_path)
    monkeypatch.setattr(store, "_git", lambda *args: None)
    manifest = json.loads(path.read_text())
    assert manifest["sha"] == sha
    assert all(store._blob_sha(store._REPO_ROOT / f) == b for f, b in manifest["files"].items())
