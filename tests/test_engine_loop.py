"""Training loop: resume equals an uninterrupted run, atomic checkpoints, NaN guard, DDP == one process."""

import os
import signal

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import TensorDataset

from lvit.engine import loop
from lvit.engine.loop import LoopConfig, NonFiniteLossError, fit, load_checkpoint, save_checkpoint
from lvit.engine.tasks import ClassificationTask

NUM_CLASSES = 4


pytestmark = pytest.mark.usefixtures("single_thread")


def _dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)
    )


def _model(batchnorm=True):
    torch.manual_seed(123)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if batchnorm else []
    return nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, NUM_CLASSES))


# The DeiT pieces that draw random numbers (Mixup/CutMix, random erasing) are on: RNG restore is tested.
RECIPE = dict(
    num_classes=NUM_CLASSES,
    lr=1e-2,
    weight_decay=0.05,
    warmup_epochs=0.5,
    mixup=0.8,
    cutmix=1.0,
    label_smoothing=0.1,
    random_erasing=0.25,
)


def _config(tmp, **kw):
    base = dict(epochs=2, batch_size=8, checkpoint_dir=tmp, checkpoint_every=3, deterministic=True, seed=7)
    return LoopConfig(**{**base, **kw})


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    full = _model()
    history_full = fit(full, ClassificationTask(RECIPE), _dataset(), _dataset(16, 1), _config(tmp_path / "a"))

    resumed = _model()
    partial = fit(
        resumed, ClassificationTask(RECIPE), _dataset(), _dataset(16, 1), _config(tmp_path / "b", max_steps=5)
    )
    assert partial == []  # stopped mid-epoch 1 (8 steps per epoch)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["global_step"] == 5
    resumed = _model()  # a fresh process would start from fresh weights; resume must restore everything
    history_resumed = fit(
        resumed, ClassificationTask(RECIPE), _dataset(), _dataset(16, 1), _config(tmp_path / "b", resume=True)
    )

    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(history_full, history_resumed, strict=True):
        for key in ("epoch", "step", "train_loss", "lr", "val_top1", "val_loss"):
            assert a[key] == b[key], key
    assert len(history_full) == 2 and history_full[1]["train_loss"] < history_full[0]["train_loss"] * 1.5


class _SigkillAfter(torch.utils.data.Dataset):
    """Serves ``dataset`` and SIGKILLs its own process at the ``after``-th sample: a crash mid-epoch."""

    def __init__(self, dataset, after):
        self.dataset, self.after, self.served = dataset, after, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.served += 1
        if self.served == self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.dataset[index]


def _train_until_killed(tmp):
    fit(
        _model(),
        ClassificationTask(RECIPE),
        _SigkillAfter(_dataset(), after=8 * 5 + 3),
        _dataset(16, 1),
        _config(tmp, checkpoint_every=2),
    )


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    full = _model()
    fit(
        full,
        ClassificationTask(RECIPE),
        _dataset(),
        _dataset(16, 1),
        _config(tmp_path / "a", checkpoint_every=2),
    )

    # fork: the child shares the imported modules; it dies by SIGKILL inside step 6 of epoch 1
    child = mp.get_context("fork").Process(target=_train_until_killed, args=(tmp_path / "b",))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert (
        load_checkpoint(tmp_path / "b" / "last.pt")["global_step"] == 4
    )  # the last checkpoint before the kill
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["last.pt"]  # no temp file survives

    resumed = _model()
    fit(
        resumed,
        ClassificationTask(RECIPE),
        _dataset(),
        _dataset(16, 1),
        _config(tmp_path / "b", checkpoint_every=2, resume=True),
    )
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def crash_mid_write(state, handle):
        handle.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(loop.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_nan_guard_raises_and_keeps_last_good_checkpoint(tmp_path):
    recipe = dict(RECIPE, lr=1e30, warmup_epochs=0, mixup=0.0, cutmix=0.0, random_erasing=0.0, min_lr=1e30)
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* step 2.*last good checkpoint"):
        fit(
            _model(batchnorm=False),
            ClassificationTask(recipe),
            _dataset(),
            None,
            _config(tmp_path, checkpoint_every=1, epochs=1),
        )
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["global_step"] == 1  # the step whose loss was still finite
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def _ddp_worker(rank, out_dir):
    model = _model(batchnorm=False)
    recipe = dict(RECIPE, mixup=0.0, cutmix=0.0, random_erasing=0.0, label_smoothing=0.0)
    fit(
        model,
        ClassificationTask(recipe),
        _dataset(32),
        None,
        LoopConfig(epochs=1, batch_size=8, seed=3, device="cpu", max_steps=3,
                   checkpoint_dir=os.path.join(out_dir, "ckpt"), checkpoint_every=1),
    )
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(out_dir, "ddp.pt"))


def test_ddp_two_gloo_processes_match_one_process_with_same_global_batch(tmp_path, on_two_ranks):
    on_two_ranks(_ddp_worker, str(tmp_path))
    single = _model(batchnorm=False)
    recipe = dict(RECIPE, mixup=0.0, cutmix=0.0, random_erasing=0.0, label_smoothing=0.0)
    fit(
        single,
        ClassificationTask(recipe),
        _dataset(32),
        None,
        LoopConfig(epochs=1, batch_size=8, seed=3, device="cpu", max_steps=3),
    )
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    moved = False
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6)
        moved |= not torch.equal(value, _model(batchnorm=False).state_dict()[name])
    assert moved  # three optimizer steps really changed the weights
    # the ranks' checkpoints gathered every rank's RNG state (numpy's too, which once failed to unpickle)
    state = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert state["global_step"] == 3 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["numpy"][1], state["rng"][1]["numpy"][1])  # seeded seed + rank


def test_repeated_augmentation_order_depends_on_the_seed():
    def order(seed, epoch):
        config = LoopConfig(epochs=1, batch_size=4, repeated_aug=3, seed=seed)
        sampler = loop._train_sampler(_dataset(16), config, loop.DistInfo())
        sampler.set_epoch(epoch)
        return list(sampler)

    assert len(order(0, 0)) == len(order(1, 0)) == 16  # DeiT's count: the dataset's size per epoch
    assert order(0, 0) == order(0, 0) and order(0, 0) != order(1, 0) and order(0, 0) != order(0, 1)


def test_batch_not_divisible_by_world_and_accumulation_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        fit(
            _model(),
            ClassificationTask(RECIPE),
            _dataset(),
            None,
            LoopConfig(epochs=1, batch_size=6, grad_accum=4),
        )


def test_gradient_accumulation_matches_full_batch(tmp_path):
    recipe = dict(RECIPE, mixup=0.0, cutmix=0.0, random_erasing=0.0)
    a, b = _model(batchnorm=False), _model(batchnorm=False)
    fit(a, ClassificationTask(recipe), _dataset(32), None, LoopConfig(epochs=1, batch_size=8, seed=1))
    fit(
        b,
        ClassificationTask(recipe),
        _dataset(32),
        None,
        LoopConfig(epochs=1, batch_size=8, grad_accum=2, seed=1),
    )
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_determinism_mode_warns_on_ops_without_deterministic_kernel():
    # On CUDA the DPT decoder's bilinear backward, 2-D cross-entropy and nanmedian have no deterministic
    # kernel; smoke recipes set deterministic=True, so such ops must warn, not abort the run. put_ is a CPU
    # op with the same alert.
    try:
        loop.seed_everything(0, deterministic=True)
        with pytest.warns(UserWarning, match="deterministic"):
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))
    finally:
        loop.seed_everything(0, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


class _TaskWithDrawingDiagnostic(ClassificationTask):
    """A diagnostic that draws random numbers, as a measurement of the untrained model may."""

    def init_diagnostics(self, model, dataset, device, batch_size):
        return {"draws": float(torch.rand(1000).sum())}


def test_the_untrained_model_is_measured_into_the_first_entry_without_changing_the_training(tmp_path):
    plain, measured = _model(), _model()
    history = fit(plain, ClassificationTask(RECIPE), _dataset(), _dataset(16, 1), _config(tmp_path / "a"))
    with_init = fit(measured, _TaskWithDrawingDiagnostic(RECIPE), _dataset(), _dataset(16, 1),
                    _config(tmp_path / "b"))
    assert "init_draws" in with_init[0] and all("init_draws" not in entry for entry in with_init[1:])
    assert not any(key.startswith("init_") for key in history[0])
    # Mixup/CutMix and erasing draw from the same generators: a diagnostic that consumed them would shift
    # every later draw. The forked RNG leaves the training as it was.
    assert [e["train_loss"] for e in with_init] == [e["train_loss"] for e in history]
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(measured.state_dict()[name], value, rtol=0, atol=0)


def test_on_first_step_is_called_once_after_the_first_optimizer_step(tmp_path):
    model = _model()
    initial = [p.detach().clone() for p in model.parameters()]
    seen = []

    def first_step() -> None:  # the weights have moved by then: the step's state is allocated
        seen.append(any(not torch.equal(a, p) for a, p in zip(initial, model.parameters(), strict=True)))

    fit(model, ClassificationTask(RECIPE), _dataset(), None, LoopConfig(epochs=2, batch_size=8, seed=7),
        on_first_step=first_step)
    assert seen == [True]  # 16 steps, one call
