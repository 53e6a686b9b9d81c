"""The commands beside the suite runner (train, fid, fid-stats, baseline, checkpoint, report) tried as a new user
would by mistake and as a hostile file-provider would (issue 25): each loses, duplicates or corrupts nothing, and
refuses bad input in one line naming the option or file, exit 2, no traceback. Most run the command in this
process (``dimbench.cli.main``): the start-up of a fresh interpreter would cost more than the command."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cli_env, read_jsonl, unique_rows
from dimbench import cli, results
from dimbench.errors import UserError
from dimbench.runfolder import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")

#: a training run of dimbench's tiny DiT on digits that takes a second: 1 step per logged window
TRAIN = ["train", "dit_tiny_4", "--batch", "4", "--warmup", "1", "--log-every", "1", "--checkpoint-every", "2"]


def _refused(capsys, code: int, *needles: str) -> str:
    """The command's error lines (exit 2, each 'dimbench: error: ...', after any progress lines), checked to contain
    ``needles``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "dimbench: error: " in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------- one writer, one rule


def _suite_folder(out: Path) -> Path:
    """A folder as `dimbench run` leaves it: a suite's record and a row of its train metric at dit_tiny_4's point."""
    out.mkdir(parents=True)
    (out / "environment.json").write_text(json.dumps({"suite": "tiny", "suite_file": "suites/tiny.yaml",
                                                      "settings": {}, "runs": [{"suite": "tiny"}]}))
    row = {"suite": "tiny", "point_key": "dit_tiny_4|r16|b4|float32|cpu", "model": "dit_tiny_4", "resolution": 16,
           "batch": 4, "dtype": "float32", "device": "cpu", "metric": "train_loss_final", "value": 0.5,
           "status": "ok", "extra": {}}
    (out / "results.jsonl").write_text(json.dumps(row) + "\n")
    return out


def test_train_into_a_suites_folder_is_refused_and_a_suite_into_a_trains_folder_too(tmp_path, capsys):  # 1
    out = _suite_folder(tmp_path / "suite_run")
    before = (out / "results.jsonl").read_bytes()
    _refused(capsys, cli.main([*TRAIN, "--steps", "1", "--out", str(out)]),
             f"{out}: it holds results of suite 'tiny' (suites/tiny.yaml), this run is `dimbench train`",
             "--allow-mixed")
    assert (out / "results.jsonl").read_bytes() == before and not (out / "checkpoint.pt").exists()

    trained = tmp_path / "trained"
    assert cli.main([*TRAIN, "--steps", "1", "--out", str(trained)]) == 0
    folder = RunFolder(trained)
    try:
        with pytest.raises(UserError, match="it holds results of `dimbench train`, this run is suite 'tiny'"):
            folder.check_suite(folder.environment(), "tiny", "cpu", {}, allow_mixed=False)
    finally:
        folder.close()


def test_train_rows_are_written_once_across_interrupts_and_reruns(tmp_path, capsys, monkeypatch):  # 5, 6
    from dimbench.training.trainer import Trainer

    out = tmp_path / "t"
    save = Trainer.save_state

    def interrupted_at_4(self):  # Ctrl-C after the window of step 3 was written, before the checkpoint of step 4
        if self.step == 4:
            raise KeyboardInterrupt
        save(self)

    monkeypatch.setattr(Trainer, "save_state", interrupted_at_4)
    assert cli.main([*TRAIN, "--steps", "4", "--out", str(out)]) == 130
    monkeypatch.setattr(Trainer, "save_state", save)
    assert [r["extra"]["step"] for r in unique_rows(out)] == [1, 2, 3, 4]

    assert cli.main([*TRAIN, "--steps", "4", "--out", str(out)]) == 0  # resumes at the checkpoint of step 2
    rows = unique_rows(out)
    assert [r["extra"]["step"] for r in rows if r["metric"] == "train_loss"] == [1, 2, 3, 4]
    assert {r["metric"] for r in rows} == {"train_loss", "train_loss_final", "train_images_per_s"}

    assert cli.main([*TRAIN, "--steps", "4", "--out", str(out)]) == 0  # finished: nothing to write
    assert "nothing left to train" in capsys.readouterr().out
    assert read_jsonl(out / "results.jsonl") == rows

    assert cli.main([*TRAIN, "--steps", "6", "--out", str(out)]) == 0  # taken further: new final rows win
    longer = read_jsonl(out / "results.jsonl")
    assert [r["extra"]["step"] for r in longer if r["metric"] == "train_loss"] == [1, 2, 3, 4, 5, 6]
    final = [r for r in results.latest(longer) if r["metric"] == "train_loss_final"]
    assert len(final) == 1 and final[0]["extra"]["steps"] == 6
    record = json.loads((out / "environment.json").read_text())
    assert record["suite"] == "train" and [r["interrupted"] for r in record["runs"]] == [True, False, False, False]


def test_a_second_train_into_a_busy_folder_is_refused(tmp_path, capsys):  # 7
    out = tmp_path / "t"
    busy = RunFolder(out, command="dimbench train dit_tiny_4 --out t")  # the first run, holding the folder
    try:
        _refused(capsys, cli.main([*TRAIN, "--steps", "1", "--out", str(out)]),
                 f"{out}: another run is writing into this folder", "dimbench train dit_tiny_4 --out t")
    finally:
        busy.close()
    assert not (out / "results.jsonl").exists() and not (out / "checkpoint.pt").exists()


def test_profile_follows_the_same_rule(tmp_path, capsys):
    out = tmp_path / "p"
    args = ["profile", "dit_tiny_4", "--resolution", "16", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert cli.main(args) == 0
    rows = unique_rows(out)
    assert cli.main(args) == 0  # the point is profiled already: nothing measured, nothing written
    assert "is profiled already" in capsys.readouterr().out
    assert read_jsonl(out / "results.jsonl") == rows
    _refused(capsys, cli.main([*args, "--repeats", "2"]), "its cpu rows were measured with other settings: "
             "profile.repeats: 1 there, 2 now")


def _gated_run(folder: Path, model: str, gmacs: float) -> Path:
    folder.mkdir(parents=True)
    row = {"suite": "s", "point_key": f"{model}|r32|b1|float32|cpu", "model": model, "resolution": 32,
           "input_size": 32, "batch": 1, "dtype": "float32", "device": "cpu", "task": "count", "metric": "gmacs",
           "value": gmacs, "unit": "GMAC", "status": "ok", "method": "meta count", "extra": {}}
    (folder / "results.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "environment.json").write_text(json.dumps({"cpu": {"model": "X", "torch_threads": 1}}))
    return folder


def test_two_baseline_updates_of_one_file_at_once_keep_both(tmp_path):  # 2
    from dimbench.files import folder_lock

    runs = [_gated_run(tmp_path / name, model, g) for name, model, g in (("a", "dit_s_2", 1.0),
                                                                          ("b", "uvit_s_2", 2.0))]
    target = tmp_path / "base" / "baseline.json"
    procs = []
    with folder_lock(target):  # as if a third writer held it: both must wait for it, then for each other
        for run in runs:
            procs.append(subprocess.Popen([sys.executable, "-m", "dimbench.cli", "baseline", str(run), "-o",
                                           str(target)], env=cli_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        for proc in procs:  # the event: each says it waits (an old writer would not wait, and end instead)
            line = proc.stderr.readline()
            while line and "waiting for another command" not in line:
                line = proc.stderr.readline()
            assert line, proc.communicate()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    entries = json.loads(target.read_text())["entries"]
    assert sorted(e["model"] for e in entries) == ["dit_s_2", "uvit_s_2"]
    assert [p.name for p in target.parent.iterdir()] == ["baseline.json"]  # no temporary file left


def test_baseline_writers_never_share_a_temporary_file(tmp_path):  # 2 (the fixed ".tmp" name)
    from dimbench.gates.baseline import build_baseline, write_baseline

    base, _ = build_baseline(_gated_run(tmp_path / "a", "dit_s_2", 1.0))
    target = tmp_path / "baseline.json"
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(100):
                write_baseline(base, target)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert json.loads(target.read_text())["entries"][0]["model"] == "dit_s_2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "baseline.json"]


# --------------------------------------------------------------------------------------- one atomic write


def test_atomic_write_replaces_whole_or_not_at_all_and_names_the_cause(tmp_path):
    from dimbench.files import WriteError, atomic_write

    target = tmp_path / "f.json"
    atomic_write(target, "old\n")

    def full_disk(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match=rf"^{target}: cannot write \(No space left on device\)$"):
        atomic_write(target, full_disk)

    def torch_like(f):  # torch's zip writer turns the disk's OSError into "unexpected pos ..."
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    with pytest.raises(WriteError, match=r"cannot write \(File too large\)"):
        atomic_write(target, torch_like)
    with pytest.raises(ZeroDivisionError):  # not a disk problem: passed on as it is
        atomic_write(target, lambda f: 1 / 0)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with pytest.raises(WriteError, match="No such file or directory"):
        atomic_write(tmp_path / "missing" / "f.json", b"x")

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f".f.json.{int(gone.stdout)}.0badc0de.tmp").write_text("a writer killed with -9 left this")
    (tmp_path / f".f.json.{os.getpid()}.0badc0de.tmp").write_text("a live writer's")
    atomic_write(target, "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".f.json.{os.getpid()}.0badc0de.tmp", "f.json"]


# --------------------------------------------------------------------------------------- images, bit depth


def _png16_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (PIL writes 16-bit grey, not 16-bit RGB)."""
    import zlib

    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_pngs_keep_their_brightness_in_training_data_and_fid_stats(tmp_path):  # 3
    from PIL import Image

    from dimbench.data import load_image_folder

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((12, 12), 20000, np.uint16)).save(folder / "grey16.png")  # 31 % of white
    _png16_rgb(folder / "rgb16.png", np.full((12, 12, 3), 40000, np.uint16))  # 61 % of white
    Image.fromarray(np.full((12, 12, 3), 100, np.uint8)).save(folder / "rgb8.png")
    data = load_image_folder(folder, 8, channels=3)
    means = {p.name: float(x.mean()) for p, x in zip(sorted(folder.iterdir()), data.x, strict=True)}
    assert means["grey16.png"] == pytest.approx(20000 / 32767.5 - 1, abs=1e-5)
    assert means["rgb16.png"] == pytest.approx(40000 / 32767.5 - 1, abs=1 / 127.5)  # PIL keeps its high byte
    assert means["rgb8.png"] == pytest.approx(100 / 127.5 - 1, abs=1e-6)

    from dimbench.data import read_image_uint8  # what fid-stats reads

    assert read_image_uint8(folder / "grey16.png", 8, 3).mean() == round(20000 / 65535 * 255)


# ------------------------------------------------------------------------------- one validation per option


@pytest.mark.parametrize("args, message", [
    (["--grad-clip", "-1"], "--grad-clip: expected a number >= 0, got -1.0"),  # 4
    (["--lr", "inf"], "--lr: expected a number > 0, got inf"),  # 20
    (["--lr", "nan"], "--lr: expected a number > 0, got nan"),
    (["--warmup", "-5"], "--warmup: expected an integer >= 0, got -5"),
    (["--resolution", "0"], "--resolution: expected an integer >= 1, got 0"),
    (["--ema", "1"], "--ema: expected a number >= 0 and < 1, got 1.0"),
    (["--betas", "0.9", "1.5"], "--betas: expected a number >= 0 and < 1, got 1.5"),
    (["--log-every", "5", "--checkpoint-every", "7"], "--checkpoint-every: expected a multiple of log_every (5)"),
    (["--batch", "10", "--grad-accum", "3"], "--grad-accum: expected a divisor of every batch size (10), got 3"),
])
def test_train_refuses_what_a_suite_refuses(tmp_path, capsys, args, message):  # 4, 20
    out = tmp_path / "t"
    _refused(capsys, cli.main(["train", "dit_tiny_4", "--steps", "1", "--out", str(out), *args]), message)
    assert not out.exists()


def test_validate_refuses_train_options_the_run_would_refuse(tmp_path):  # 21
    from dimbench.suite import SuiteError, load_suite

    def problems(options: str, batch: int = 10) -> str:
        path = tmp_path / "s.yaml"
        path.write_text(f"models: [dit_tiny_4]\nresolutions: [16]\nbatch_sizes: [{batch}]\nmetrics: [train]\n"
                        f"options:\n  train: {options}\n")
        with pytest.raises(SuiteError) as caught:
            load_suite(path)
        return "\n".join(caught.value.errors)

    assert "key 'options.train.lr': expected a number > 0, got nan" in problems("{lr: .nan}")
    assert "key 'options.train.checkpoint_every': expected a multiple of log_every (5)" in problems(
        "{checkpoint_every: 7, log_every: 5}")
    assert "key 'options.train.heldout_every': expected a multiple of log_every (20) or 0" in problems(
        "{heldout_every: 50, log_every: 20, checkpoint_every: 100}")
    assert "key 'options.train.grad_accum': expected a divisor of every batch size (10), got 3" in problems(
        "{grad_accum: 3}")
    assert "options.train.data': expected 'digits' or an existing local path" in problems("{data: /no/such/dir}")
    found = problems("{steps: {dit_tiny_2: 10, dim_tiny_2: 0}}")  # steps per model: the suite's models, each once
    assert "key 'options.train.steps.dim_tiny_2': expected an integer >= 1, got 0" in found
    found = problems("{steps: {dim_tiny_2: 10}}")
    assert ("key 'options.train.steps': expected a value for every model of the suite, got none for 'dit_tiny_4'"
            in found)
    assert ("key 'options.train.steps.dim_tiny_2': expected one of the suite's models (dit_tiny_4), got "
            "'dim_tiny_2'" in found)
    assert "expected an integer >= 1, or a mapping {model name: such a value}, got" in problems("{steps: {}}")


def test_a_diverged_training_says_so_each_time_it_is_run(tmp_path, capsys):  # 12
    out = tmp_path / "t"
    args = [*TRAIN, "--steps", "6", "--lr", "1e30", "--grad-clip", "0", "--warmup", "0", "--out", str(out)]
    for _ in range(2):
        _refused(capsys, cli.main(args), "training diverged: the mean loss of the window ending at step",
                 "lower the learning rate")
    rows = unique_rows(out)
    assert [r["status"] for r in rows if r["metric"] == "train_loss_final"] == ["error"]
    assert all(np.isfinite(r["value"]) for r in rows if r["metric"] == "train_loss")


@pytest.mark.parametrize("device", ["tpu", "cuda:banana", "cuda:99"])
def test_train_fid_and_fid_stats_check_the_device(tmp_path, capsys, device):  # 13
    for args in (["train", "dit_tiny_4", "--out", str(tmp_path / "t")],
                 ["fid", "dit_tiny_4", "--resolution", "16", "--out", str(tmp_path / "f")],
                 ["fid-stats", str(tmp_path), "-o", str(tmp_path / "s.npz"), "--inception-weights",
                  str(tmp_path / "w.pth")]):
        _refused(capsys, cli.main([*args, "--device", device]), f"--device '{device}'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_beyond_memory_is_refused_before_allocating_and_out_of_memory_is_recorded(tmp_path, capsys,
                                                                                         monkeypatch):  # 14
    _refused(capsys, cli.main([*TRAIN, "--resolution", "100000", "--out", str(tmp_path / "huge")]),
             "digits: 1437 images at 100000x100000 px need about", "TiB of memory", "lower the resolution")

    import torch

    from dimbench.training.trainer import Trainer

    def out_of_memory(self, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "run", out_of_memory)
    _refused(capsys, cli.main([*TRAIN, "--steps", "1", "--out", str(tmp_path / "oom")]),
             "out of memory training dit_tiny_4 at 16 px, batch 4", "lower --batch or --resolution")
    (row,) = read_jsonl(tmp_path / "oom" / "results.jsonl")
    assert row["status"] == "oom" and row["metric"] == "train_loss_final"


def test_a_full_disk_while_saving_the_training_checkpoint_is_said_and_leaves_nothing_behind(tmp_path):  # 18
    import resource

    out = tmp_path / "t"
    limit = 64 * 1024  # the record and the rows fit; the checkpoint (model, EMA, AdamW state) does not
    proc = subprocess.run([sys.executable, "-m", "dimbench.cli", *TRAIN, "--steps", "2", "--out", str(out)],
                          env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"{out / 'checkpoint.pt'}: cannot write (File too large): the training checkpoint was not saved"
            in proc.stderr), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "logs", "results.jsonl", "run.lock"]
    assert [r["extra"]["step"] for r in unique_rows(out)] == [1, 2]  # the rows before it are kept


# ----------------------------------------------------------------------------------------------- JSON depth


def test_deeply_nested_json_is_a_message_not_a_recursion_error(tmp_path, capsys):  # 16
    deep = "[" * 100_000 + "]" * 100_000
    run = _gated_run(tmp_path / "run", "dit_s_2", 1.0)
    assert cli.main(["baseline", str(run), "-o", str(tmp_path / "b.json")]) == 0
    capsys.readouterr()
    nested = tmp_path / "nested.json"
    nested.write_text(deep)
    _refused(capsys, cli.main(["gate", str(run), "--baseline", str(nested)]),
             f"{nested}: not readable as JSON (nested more than 64 levels deep)")

    (run / "environment.json").write_text('{"cpu": ' + deep + "}")
    for args in (["gate", str(run), "--baseline", str(tmp_path / "b.json")], ["baseline", str(run), "-o",
                                                                                str(tmp_path / "c.json")]):
        _refused(capsys, cli.main(args), f"{run / 'environment.json'}: not readable as JSON (nested more than 64")
    (run / "environment.json").write_text("{}")
    with open(run / "results.jsonl", "a") as f:
        f.write('{"extra": ' + deep + "}\n" + (run / "results.jsonl").read_text())
    for args in (["gate", str(run), "--baseline", str(tmp_path / "b.json")], ["report", str(run)]):
        _refused(capsys, cli.main(args), f"{run / 'results.jsonl'}:2: not a result row (nested more than 64")


# ----------------------------------------------------------------------------------------------- checkpoints


def zip_bomb(path: Path, rows: int, cols: int) -> Path:
    """A checkpoint in torch.save's zip format whose one float32 tensor (rows x cols) is stored deflated: zeros
    that inflate about 1,000-fold (25,000 x 28,000 makes a 2.6 MB file of 2.6 GiB)."""

    def integer(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    def text(s: bytes) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s

    pickled = (b"\x80\x02}" + text(b"w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + text(b"storage")
               + b"ctorch\nFloatStorage\n" + text(b"0") + text(b"cpu") + integer(rows * cols) + b"tQ" + integer(0)
               + integer(rows) + integer(cols) + b"\x86" + integer(cols) + integer(1)
               + b"\x86\x89ccollections\nOrderedDict\n)RtRs.")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in (("data.pkl", pickled), (".format_version", b"1"), ("byteorder", b"little"),
                           ("version", b"3\n")):
            z.writestr(f"archive/{name}", data)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            left, zeros = rows * cols * 4, bytes(1 << 24)
            while left:
                f.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))
    return path


def test_a_zip_bomb_checkpoint_is_refused_before_anything_is_inflated(tmp_path, monkeypatch):  # 9
    import torch

    import models
    from dimbench.commands import checkpoint as checkpoint_command
    from dimbench.training.trainer import load_training_state
    from models.checkpoints import CheckpointError

    bomb = zip_bomb(tmp_path / "bomb.pt", 8192, 4096)  # 128 MiB of zeros in about 130 kB
    assert bomb.stat().st_size < 1 << 20

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called on a decompression bomb")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match="refused as a decompression bomb, nothing was inflated"):
        models.inspect_checkpoint(bomb)
    with pytest.raises(ValueError, match="decompression bomb"):
        load_training_state(bomb)
    err = io.StringIO()
    assert checkpoint_command.inspect(str(bomb), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith(f"dimbench checkpoint inspect: error: {bomb}: its zip archive declares 0.13 GiB "
                                     "of contents in a 0.13 MiB file")


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    import torch

    import models

    with torch.device("cpu"):
        model = models.create_model("dit_tiny_4")
    path = tmp_path / "tiny.pt"
    models.save_checkpoint(model, path)
    return path


def test_checkpoint_convert_into_a_missing_folder_onto_a_file_and_on_a_full_disk(tiny_checkpoint, tmp_path):  # 17
    import resource

    from dimbench.commands import checkpoint as checkpoint_command

    def convert(dest: Path) -> tuple[int, str]:
        err = io.StringIO()
        code = checkpoint_command.convert(str(tiny_checkpoint), str(dest), model="dit_tiny_4", stdout=io.StringIO(),
                                      stderr=err)
        return code, err.getvalue()

    assert convert(tmp_path / "new" / "folder" / "out.pt")[0] == 0
    assert (tmp_path / "new" / "folder" / "out.pt").is_file()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, err = convert(a_file / "out.pt")
    assert code == 2 and f"{a_file / 'out.pt'}: cannot write into {a_file}" in err
    code, err = convert(tmp_path)
    assert code == 2 and f"{tmp_path}: is a folder" in err

    full = tmp_path / "full"
    full.mkdir()
    proc = subprocess.run([sys.executable, "-m", "dimbench.cli", "checkpoint", "convert", str(tiny_checkpoint),
                           str(full / "out.pt"), "--model", "dit_tiny_4"], env=cli_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{full / 'out.pt'}: cannot write (File too large)" in proc.stderr
    assert list(full.iterdir()) == []  # nor a temporary file


# ------------------------------------------------------------------------------------------------------ fid


def test_a_reference_with_nan_or_inf_is_refused_when_validated(tmp_path):  # 11
    from dimbench.fid.reference import FEATURES, check_reference_file, read_reference

    for name, mu, sigma in (("nan_mu", np.full(FEATURES, np.nan), np.eye(FEATURES)),
                            ("inf_sigma", np.zeros(FEATURES), np.where(np.eye(FEATURES) > 0, np.inf, 0.0))):
        path = tmp_path / f"{name}.npz"
        np.savez(path, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
        key = "mu" if name == "nan_mu" else "sigma"
        expected = f"reference statistics {path}: key '{key}' holds NaN or infinite values"
        assert (check_reference_file(path) or "").startswith(expected)
        with pytest.raises(UserError, match="holds NaN or infinite values"):
            read_reference(path)


def test_fid_names_its_options_as_flags(tmp_path, capsys):  # 19
    err = _refused(capsys, cli.main(["fid", "dit_tiny_4", "--resolution", "16", "--out", str(tmp_path / "f"),
                                     "--samples", "0", "--reference", str(tmp_path / "nope.npz")]),
                   "dimbench: error: --samples: expected an integer >= 2, got 0",
                   "dimbench: error: --reference: expected a reference statistics .npz")
    assert "':" not in err and "--arr_0" not in err


# ------------------------------------------------------------------------------------------------- report


def test_a_large_folder_is_summarised_not_drawn_whole_and_the_report_says_how_far_it_is(tmp_path, monkeypatch):  # 10
    from dimbench import report as report_package
    from dimbench.report import build_report, content, data

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import report_scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    folder = tmp_path / "big"
    report_scale.write(folder, 40 * len(report_scale.BATCHES))  # 1 model x 40 resolutions x 20 batch sizes
    report = content.build(data.load(folder))
    compute = next(s for s in report.sections if s.anchor == "compute")
    assert len(compute.figures) == 6  # of 20 batch sizes (document.MAX_FACETS)
    assert any("14 more setting(s) are not drawn here" in p for p in compute.paragraphs)
    tables = next(s for s in report.sections if s.anchor == "tables").tables
    assert tables and all(len(t.columns) == 1 + 16 for t in tables)  # model + 16 resolutions (MAX_TABLE_COLUMNS)
    assert "Showing 16 of its 40 resolutions" in tables[0].caption
    steps: list[str] = []
    content.build(data.load(folder), steps.append)
    assert steps[0] == f"section 1/{len(content.SECTIONS)}: summary" and len(steps) == len(content.SECTIONS)

    # (drawing is the renderers' own business, tested with the report; here: what the command tells meanwhile)
    monkeypatch.setattr(report_package.html_render, "render", lambda report: "<html></html>")
    monkeypatch.setattr(report_package.pdf_render, "render", lambda report, f: f.write(b"%PDF-1.4"))
    said: list[str] = []
    html, pdf = build_report(folder, tmp_path / "out", progress=said.append)
    assert said[:2] == [f"reading {folder}", "1,600 rows, 800 points, 1 model(s), 40 resolution(s)"]
    assert said[-2] == "drawing the HTML (12 figures)" and said[-1] == "drawing the PDF"  # 6 facets x 2 sections
    assert html.read_text() == "<html></html>" and pdf.read_bytes() == b"%PDF-1.4"
