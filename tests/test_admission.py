"""The GPU admission gate: a training starts when enough memory is free, one start at a time."""

import threading
import time

import pytest
import torch

from lvit.engine.admission import admitted

CUDA = torch.device("cuda", 0)  # constructing it needs no GPU; the gate reads memory through free_memory


def _readings(values):
    """A free_memory stand-in that returns ``values`` in turn (the last one forever) and counts its calls."""
    calls = []

    def free_memory(device):
        calls.append(device)
        return values[min(len(calls), len(values)) - 1]

    return free_memory, calls


def test_waits_until_the_gpu_reports_enough_free_memory(tmp_path):
    free_memory, calls = _readings([1.0, 3.0, 5.0, 9.0])
    with admitted(CUDA, 4.0, poll_s=0, free_memory=free_memory, lock_path=tmp_path / "gpu.lock"):
        assert len(calls) == 3  # 1 and 3 GiB were too little; 5 admitted it


def test_a_second_start_waits_until_the_first_training_has_settled(tmp_path):
    lock = tmp_path / "gpu.lock"
    free_memory, _ = _readings([100.0])
    order = []

    def second():
        with admitted(CUDA, 1.0, poll_s=0, free_memory=free_memory, lock_path=lock):
            order.append("second admitted")

    with admitted(CUDA, 1.0, poll_s=0, free_memory=free_memory, lock_path=lock) as settled:
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first settles")
        settled()
        thread.join(timeout=10)
        settled()  # a second call is harmless
    assert order == ["first settles", "second admitted"]


def test_the_lock_is_released_when_the_training_fails(tmp_path):
    lock = tmp_path / "gpu.lock"
    free_memory, _ = _readings([100.0])
    with pytest.raises(RuntimeError, match="out of memory"), admitted(CUDA, 1.0, free_memory=free_memory,
                                                                       lock_path=lock):
        raise RuntimeError("out of memory")
    done = threading.Event()

    def next_one():
        with admitted(CUDA, 1.0, free_memory=free_memory, lock_path=lock):
            done.set()

    threading.Thread(target=next_one, daemon=True).start()
    assert done.wait(timeout=10)


def test_gives_up_waiting_after_its_patience_with_a_warning(tmp_path):
    free_memory, calls = _readings([0.5])
    gate = admitted(CUDA, 4.0, poll_s=0.01, patience_s=0.05, free_memory=free_memory,
                    lock_path=tmp_path / "gpu.lock")
    with pytest.warns(UserWarning, match="0.5 GiB free after waiting"), gate:
        pass
    assert len(calls) > 1


@pytest.mark.parametrize(("device", "need"), [(torch.device("cpu"), 4.0), (CUDA, 0.0)])
def test_no_gate_on_the_cpu_or_without_a_declared_need(tmp_path, device, need):
    free_memory, calls = _readings([0.0])
    with admitted(device, need, free_memory=free_memory, lock_path=tmp_path / "gpu.lock") as settled:
        settled()
    assert calls == [] and not (tmp_path / "gpu.lock").exists()
