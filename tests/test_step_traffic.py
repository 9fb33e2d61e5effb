"""benchmarks/step_traffic.py counts the bytes an operator reads and writes: views and operators that hand
back their input move nothing, an expanded tensor is read once, a slice only as far as it spans."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from step_traffic import TrafficCounter  # noqa: E402


def test_bytes_read_and_written_per_operator():
    x = torch.ones(1000)  # 4000 bytes
    one = torch.ones(1)
    big = torch.ones(10_000)
    counter = TrafficCounter()
    with counter:
        counter.phase = "forward"
        x * 2  # reads x, writes 1000 floats
        x.view(10, 100)  # a view: nothing moves
        one.expand(1000) + x  # the expanded operand is 4 bytes of storage
        counter.phase = "backward"
        big[:100] * 1  # the slice spans 100 floats of a 10000-float storage
        with torch.inference_mode():  # where eval-mode dropout reaches the dispatcher, and hands x back
            torch.nn.functional.dropout(x, 0.5, training=False)
        x.add_(1)  # in place: reads and writes x
    assert counter.bytes == {("forward", "mul"): 8000, ("forward", "add"): 8004, ("backward", "mul"): 800,
                             ("backward", "add_"): 8000}
