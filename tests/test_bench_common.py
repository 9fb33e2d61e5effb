"""Every benchmark JSON carries its provenance: the code state it ran from beside device and versions."""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_common  # noqa: E402


def test_benchmark_record_names_the_commit_it_ran_from(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_common, "git_state", lambda: ("ab" * 20, True))
    path = tmp_path / "bench.json"
    bench_common.write_json(str(path), "demo", bench_common.environment("cpu"), argparse.Namespace(size=8),
                            time.monotonic(), figure=1.5)
    record = json.loads(path.read_text())
    assert (record["git_sha"], record["dirty"]) == ("ab" * 20, True)
    assert record["benchmark"] == "demo" and record["settings"] == {"size": 8} and record["figure"] == 1.5
