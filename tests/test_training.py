"""The training loop: it learns, it resumes exactly, accumulation / activation checkpointing / DDP change nothing
but how the work is split, and weak-to-strong starts from the low-resolution weights."""

from __future__ import annotations

import os
import pickle
import socket
from concurrent.futures import Future

import pytest
import torch
import torch.multiprocessing as mp

import models
from dimbench.data import load_digits
from dimbench.training import TrainConfig, Trainer, load_training_state

#: tiny and fast: 5 blocks, width 64, patch 4, 16x16 one-channel digits
FAST = "uvit_tiny_4"


def make(model_name: str = FAST, *, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return models.create_model(model_name, **overrides)


def config(**kw) -> TrainConfig:
    base = dict(steps=20, batch=16, lr=1e-3, warmup=5, ema=0.9, log_every=5, checkpoint_every=10, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16, "train")


def trainer(model_name, data, cfg, state_path=None, **kw) -> Trainer:
    model = make(model_name)
    return Trainer(model, data, cfg, timestep=models.family_of_model(model_name).timestep, state_path=state_path,
                   **kw)


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("patch, size, counts", [
    (4, 16, {"dim_tiny_4": 228_176, "dit_tiny_4": 407_264, "uvit_tiny_4": 269_594}),
    (2, 8, {"dim_tiny_2": 226_628, "dit_tiny_2": 404_936, "uvit_tiny_2": 268_046}),
])
def test_tiny_models_share_one_shape(patch, size, counts):
    """docs/models.md §2.4: 5 blocks, width 64, 1-channel, 10 classes + null, in every family: patch 4 at 16 px,
    and patch 2 at 8 px (the quality suite's, 16 tokens)."""
    for name, count in counts.items():
        with torch.device("meta"):
            m = models.create_model(name)
        assert models.model_info(name).official == "dimbench"
        assert (m.width, m.patch_size, m.in_channels, m.num_classes, m.input_size) == (64, patch, 1, 10, size)
        blocks = sum(len(lst) for lst in m.modules() if isinstance(lst, torch.nn.ModuleList)
                     ) + (1 if name.startswith("uvit") else 0)  # U-ViT's mid block is not in a list
        assert blocks == 5, name
        assert sum(p.numel() for p in m.parameters()) == count
        assert models.family_of_model(name).diffusion is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit_tiny_4", "uvit_tiny_4", "dim_tiny_4"])
def test_short_training_lowers_the_loss(name, digits, one_thread):
    steps = 40 if name == "dim_tiny_4" else 80
    t = trainer(name, digits, config(steps=steps, batch=32, log_every=10, checkpoint_every=10))
    result = t.run()
    first, last = result.logs[0]["loss"], result.logs[-1]["loss"]
    # an untrained model predicts ~0 (unit-variance noise: MSE ~1); a few dozen steps must cut that clearly
    assert last < 0.75 * first, [round(log["loss"], 4) for log in result.logs]
    if name.startswith("dit"):  # learned sigma: the VLB term is part of the loss and logged
        assert "vb" in result.logs[-1] and result.logs[-1]["loss"] > result.logs[-1]["mse"]


def test_resume_continues_the_same_curve(digits, tmp_path, one_thread):
    """Interrupted at step 10 and resumed (a new process would do exactly this): the same loss windows, weights,
    EMA (its warm-up counts the updates before the interruption) and held-out losses as one uninterrupted run;
    how often the held-out loss is measured may change on resume, and only that changes."""
    heldout = load_digits(16, "test")
    cfg = config(steps=20, ema=0.99, ema_warmup=True, heldout_every=10)
    straight = trainer(FAST, digits, cfg, heldout=heldout)
    full = straight.run()

    path = tmp_path / "ckpt.pt"
    first = trainer(FAST, digits, config(steps=10, ema=0.99, ema_warmup=True, heldout_every=5), state_path=path,
                    heldout=heldout)
    first.run()
    assert load_training_state(path)["step"] == 10
    second = trainer(FAST, digits, cfg, state_path=path, heldout=heldout)
    resumed = second.run()
    assert resumed.resumed_from == 10
    assert [log["step"] for log in resumed.logs] == [5, 10, 15, 20]
    assert [log["loss"] for log in resumed.logs] == [log["loss"] for log in full.logs]
    heldout_losses = [(log["step"], log.get("heldout_loss")) for log in resumed.logs]
    assert heldout_losses[1:] == [(log["step"], log.get("heldout_loss")) for log in full.logs][1:]
    assert heldout_losses[0][1] is not None, "the first run measured it every 5 steps, and the curve keeps that"
    assert torch.equal(params(second.model), params(straight.model))
    assert torch.equal(params(second.ema), params(straight.ema))


def test_resume_refuses_a_different_run(digits, tmp_path, one_thread):
    path = tmp_path / "ckpt.pt"
    trainer(FAST, digits, config(steps=5, checkpoint_every=5), state_path=path).run()
    with pytest.raises(ValueError, match="batch"):
        trainer(FAST, digits, config(steps=10, batch=8, checkpoint_every=5), state_path=path).run()


def test_gradient_accumulation_matches_one_batch(digits, one_thread):
    a = trainer("dit_tiny_4", digits, config(steps=2, grad_accum=1, log_every=1, checkpoint_every=1))
    b = trainer("dit_tiny_4", digits, config(steps=2, grad_accum=4, log_every=1, checkpoint_every=1))
    ra, rb = a.run(), b.run()
    assert torch.allclose(params(a.model), params(b.model), atol=1e-6)
    assert ra.logs[-1]["loss"] == pytest.approx(rb.logs[-1]["loss"], rel=1e-5)


def test_activation_checkpointing_gives_the_same_step(digits, one_thread):
    a = trainer("dim_tiny_4", digits, config(steps=1, log_every=1, checkpoint_every=1))
    b = trainer("dim_tiny_4", digits, config(steps=1, log_every=1, checkpoint_every=1, activation_checkpointing=True))
    a.run(), b.run()
    assert torch.allclose(params(a.model), params(b.model), atol=1e-6)
    # the EMA copy runs its own weights, not the checkpointed live blocks'
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10.0, 500.0]), torch.tensor([1, 2])
    with torch.no_grad():
        before = b.ema(x, t, y)
        for p in b.model.parameters():
            p.add_(1.0)
        assert torch.equal(b.ema(x, t, y), before)
        assert torch.allclose(before, a.ema(x, t, y), atol=1e-5)


def test_warmup_then_constant_learning_rate(digits):
    t = trainer(FAST, digits, config(lr=1e-3, warmup=4))
    assert [t.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_label_dropout_uses_the_null_class(digits):
    t = trainer(FAST, digits, config(batch=400, label_drop=0.25))
    y = torch.cat(t._draw(0)["y"])
    null = (y == t.num_classes).float().mean().item()
    assert 0.18 < null < 0.32  # 400 draws at p = 0.25: 4 standard deviations either side


def test_ema_follows_the_weights(digits, one_thread):
    t = trainer(FAST, digits, config(steps=3, ema=0.5, log_every=1, checkpoint_every=1))
    before = params(t.ema).clone()
    t.run()
    after_model, after_ema = params(t.model), params(t.ema)
    assert not torch.equal(before, after_ema)
    assert (after_ema - after_model).abs().max() < (before - after_model).abs().max()


def test_ema_warmup_averages_from_the_first_updates(digits, one_thread):
    """With ema_warmup the decay after k updates is min(ema, (1 + k) / (10 + k)): after one update the EMA is
    2/11 of the initial weights and 9/11 of the updated ones, not 0.99 of the initial ones."""
    t = trainer(FAST, digits, config(steps=1, ema=0.99, ema_warmup=True, log_every=1, checkpoint_every=1))
    initial = params(t.ema).clone()
    t.run()
    torch.testing.assert_close(params(t.ema), initial * (2 / 11) + params(t.model) * (9 / 11), rtol=1e-5,
                               atol=1e-6)
    plain = trainer(FAST, digits, config(steps=1, ema=0.99, log_every=1, checkpoint_every=1))
    plain.run()
    torch.testing.assert_close(params(plain.ema), initial * 0.99 + params(plain.model) * 0.01, rtol=1e-5, atol=1e-6)
    assert "warm-up: min(ema, (1+k)/(10+k))" in t.config.describe()


def test_heldout_loss_every_n_steps_on_fixed_noise(digits, one_thread):
    """heldout_every: the logs of those steps (and the last) carry the loss on the held-out set, which is the
    same number for the same weights however often it is asked (times and noise fixed by the seed)."""
    heldout = load_digits(16, "test")
    logs = []
    t = trainer(FAST, digits, config(steps=15, heldout_every=10), heldout=heldout)
    t.run(on_log=lambda step, info: logs.append((step, info.get("heldout_loss"))))
    assert [step for step, loss in logs if loss is not None] == [10, 15]
    assert logs[-1][1] == pytest.approx(t.heldout_loss(), rel=1e-6) == pytest.approx(t.heldout_loss(), rel=1e-6)
    assert 0 < logs[-1][1] < 2 and t.meta["heldout"].startswith("scikit-learn load_digits (test split")
    with pytest.raises(ValueError, match="heldout_every"):
        config(heldout_every=7)


def test_resume_accepts_settings_added_after_the_checkpoint(digits, tmp_path, one_thread):
    """A checkpoint written before a setting existed ran with its default: it resumes with the default, and is
    refused with another value (here ema_warmup)."""
    path = tmp_path / "ckpt.pt"
    trainer(FAST, digits, config(steps=5), state_path=path).run()
    state = torch.load(path, weights_only=True)
    del state["config"]["ema_warmup"]
    torch.save(state, path)
    assert trainer(FAST, digits, config(steps=10), state_path=path).run().resumed_from == 5
    with pytest.raises(ValueError, match="ema_warmup = False, this run asks for True"):
        trainer(FAST, digits, config(steps=15, ema_warmup=True), state_path=path).run()


def test_config_refuses_checkpoints_between_log_windows():
    with pytest.raises(ValueError, match="multiple of log_every"):
        TrainConfig(steps=10, batch=4, log_every=4, checkpoint_every=6)


def test_weak_to_strong_loads_low_resolution_weights(digits, tmp_path, one_thread):
    from dimbench.metrics.train import build_for_training

    low = make("dim_tiny_4")
    model, state, how = build_for_training("dim_tiny_4", 32, channels=1, seed=0, device=torch.device("cpu"),
                                           init_from=low, init_what="the 16 px model")
    assert model.pad_layout == "cyclic" and model.input_size == 32  # dim.md §6
    assert "weak-to-strong" in how and "pad_layout=cyclic" in how
    low_sd = low.state_dict()
    for name, tensor in model.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(tensor, low_sd[name]), name
    assert model.pos_embed.shape[1] == 2 + 8 * 8 and low.pos_embed.shape[1] == 2 + 4 * 4
    assert state is not None and torch.equal(state["pos_embed"], model.pos_embed.detach())


# ---- DistributedDataParallel on gloo, two processes ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = load_digits(16, "train")
        t = trainer("dit_tiny_4", data, config(steps=2, batch=16, log_every=1, checkpoint_every=1))
        result = t.run()
        torch.save({"params": params(t.model), "losses": [log["loss"] for log in result.logs]},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_doubled_batch(digits, tmp_path, one_thread):
    port = _free_port()
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["params"], r1["params"])  # DDP keeps the ranks identical
    # one process, the same global batch of 16 (the two ranks took 8 each)
    single = trainer("dit_tiny_4", digits, config(steps=2, batch=16, log_every=1, checkpoint_every=1))
    losses = [log["loss"] for log in single.run().logs]
    assert torch.allclose(r0["params"], params(single.model), atol=1e-6)
    assert r0["losses"] == pytest.approx(losses, rel=1e-5)


def test_bfloat16_autocast_and_the_vp_sde_train_and_sample(digits, one_thread):
    """Mixed precision (autocast; CUDA in real use, the CPU here) and DiM-S's continuous VP-SDE recipe run end
    to end: finite losses, and Euler-Maruyama samples in range."""
    from dimbench.training.sampling import SamplerSpec, class_labels, generate
    from models.diffusion import make_schedule

    t = trainer(FAST, digits, config(steps=2, precision="bfloat16", schedule="vpsde", log_every=1,
                                     checkpoint_every=1))
    logs = t.run().logs
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    images = generate(t.ema, schedule=make_schedule("vpsde"), timestep=models.family("uvit").timestep,
                      spec=SamplerSpec("euler_maruyama", 5, 0.5), labels=class_labels(4, 10), count=4,
                      shape=(1, 16, 16), seed=0)
    assert images.shape == (4, 1, 16, 16) and images.abs().max() <= 1


class PickledPool:
    """ProcessPoolExecutor's interface, every argument and result through pickle as to a child process, the call
    made at once in this process: the train metric's parallel seeds without a child's start (seconds of imports).
    At once, not on a thread: torch's global generator (the seeded initial weights) is shared between threads,
    not between processes, so two seeds initialising on two threads would race where two processes do not."""

    def __init__(self, max_workers, mp_context=None):
        pass

    def submit(self, fn, *args):
        done = Future()
        fn, args = pickle.loads(pickle.dumps((fn, args)))
        done.set_result(pickle.loads(pickle.dumps(_call(fn, args))))
        return done

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def _call(fn, args):
    return fn(*args)


def test_seeds_trained_at_once_match_one_after_the_other(tmp_path, monkeypatch, one_thread):
    """The train metric's ``parallel``: seed 1 trained by the pool (what a child process gets and returns goes
    through pickle) besides the worker training seed 0 gives the same checkpoint and the same rows as the two trained
    one after the other (only the timing rows may differ)."""
    from dimbench.metrics import train
    from dimbench.metrics.base import slug
    from dimbench.points import SweepPoint

    monkeypatch.setattr(train, "ProcessPoolExecutor", PickledPool)
    point = SweepPoint("t", "dit_tiny_2", 8, 8, 8, "float32", "cpu", ("train",))
    options = dict(steps=4, warmup=1, seeds=2, log_every=2, checkpoint_every=2, heldout_every=0, threads=1)
    rows = {}
    for parallel in (1, 2):
        out = tmp_path / f"p{parallel}"
        found = train.TRAIN.measure(point, out_dir=str(out), parallel=parallel, **options)
        rows[parallel] = {m.metric: m for m in found if m.step is None}
        state = out / "state" / slug(point.key) / "train"
        rows[parallel]["states"] = [load_training_state(state / name)
                                    for name in ("checkpoint.pt", "checkpoint-seed1.pt")]
    for one, two in zip(rows[1]["states"], rows[2]["states"], strict=True):
        assert one["step"] == two["step"] == 4 and one["config"] == two["config"]
        for key in one["model"]:
            assert torch.equal(one["model"][key], two["model"][key]), key
    for name in ("train_loss_final", "train_tflop"):
        assert rows[1][name].value == rows[2][name].value
        assert rows[1][name].extra["per_seed"] == rows[2][name].extra["per_seed"]
    assert "2 seeds trained at once" in rows[2]["train_time_s"].method
    assert "at once" not in rows[1]["train_time_s"].method


def test_steps_per_model_train_each_model_its_own(tmp_path, one_thread):
    """``steps`` as {model: steps}: each point trains its model's number of steps, and its rows say so."""
    from dimbench.metrics import train
    from dimbench.metrics.base import slug
    from dimbench.points import SweepPoint

    steps = {"dit_tiny_2": 2, "uvit_tiny_2": 4}
    for name, expected in steps.items():
        point = SweepPoint("t", name, 8, 8, 8, "float32", "cpu", ("train",))
        found = train.TRAIN.measure(point, out_dir=str(tmp_path), steps=steps, warmup=1, log_every=1,
                                    checkpoint_every=1, heldout_every=0, threads=1)
        final = next(m for m in found if m.metric == "train_loss_final")
        state = load_training_state(tmp_path / "state" / slug(point.key) / "train" / "checkpoint.pt")
        assert state["step"] == state["config"]["steps"] == final.extra["steps"] == expected


def test_finetune_steps_per_model():
    """``finetune_steps`` as {model: steps}, like ``steps``: the weak-to-strong config of each model takes its own,
    the from-scratch config the ``steps`` value; a mapping missing a model of the suite is refused when read."""
    from types import SimpleNamespace

    from dimbench.metrics import train
    from dimbench.points import SweepPoint

    options = {field.name: field.default for field in train._OPTIONS}
    options.update(steps={"dim_tiny_2": 30, "dit_tiny_2": 60}, finetune_steps={"dim_tiny_2": 8, "dit_tiny_2": 6})
    ctx = SimpleNamespace(options=options)
    for name, scratch, finetune in (("dim_tiny_2", 30, 8), ("dit_tiny_2", 60, 6)):
        point = SweepPoint("t", name, 16, 16, 8, "float32", "cpu", ("train",))
        assert train.train_config(ctx, point, finetune=False).steps == scratch
        assert train.train_config(ctx, point, finetune=True).steps == finetune
    found = train.TRAIN.check_options(dict(options, finetune_steps={"dim_tiny_2": 8}), ["dim_tiny_2", "dit_tiny_2"],
                                      [16])
    assert ("finetune_steps", "key 'options.train.finetune_steps': expected a value for every model of the suite, "
            "got none for 'dit_tiny_2'") in found
    assert not train.TRAIN.check_options(options, ["dim_tiny_2", "dit_tiny_2"], [16])
