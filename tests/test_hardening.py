"""Issue 11: every bad input or fault a hostile new user tried, through the command line: the exit
status, the one ``error:`` line, and the files before and after."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import assert_one_line_error, invoke, make_archive, make_image_tree, write_batches_py
from minimascope import data, io, models, runs
from minimascope.cli import app
from minimascope.config import BLOCK_STATS, TrainConfig

TINY = ["--epochs", "1", "--train-subset", "100", "--test-subset", "50", "--batch-size", "50",
        "--eval-batch-size", "50"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} \
        if folder.exists() else {}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


def assert_one_error_line(stderr: str, pattern: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], stderr


class WritesAFile:
    """A pickle that, when loaded with plain pickle, creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mknod, (str(self.path),))


# ----------------------------------------------------------------------------- security


def test_crafted_cifar_batch_runs_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "root" / "cifar-10-batches-py"
    write_batches_py(folder, make_image_tree(tmp_path / "tree"))
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": WritesAFile(marker), b"labels": []}))
    result = invoke("train", *TINY, "--data", str(tmp_path / "root"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "data_batch_2: it asks for posix.mknod, which a CIFAR-10 batch never holds")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_crafted_weights_file_runs_nothing(tmp_path: Path, cifar_source: str) -> None:
    marker = tmp_path / "pwned"
    torch.save({"format": models.WEIGHTS_FORMAT, "state_dict": WritesAFile(marker)}, tmp_path / "evil.pt")
    result = invoke("compare", str(tmp_path / "evil.pt"), str(tmp_path / "evil.pt"), "--data", cifar_source,
                    "--out", str(tmp_path / "cmp"))
    assert_one_line_error(result, "cannot read weights file")
    assert not marker.exists() and not (tmp_path / "cmp").exists()


def test_cache_is_read_without_pickle(tmp_path: Path, private_cache: Path) -> None:
    make_image_tree(tmp_path / "tree")
    data.load("cifar10", tmp_path / "tree")
    sources = []
    for cache in private_cache.glob("cifar10-*.npz"):  # the session's cache holds other sources' files too
        with np.load(cache, allow_pickle=False) as cached:  # nothing in it needs pickle
            assert {"train_images", "test_labels", "source"} <= set(cached.files)
            sources.append(str(cached["source"]))
    assert str((tmp_path / "tree").resolve()) in sources


# ----------------------------------------------------------------------------- nothing lost, nothing mixed


def test_a_run_directory_in_use_is_refused_at_once(tmp_path: Path, cifar_source: str) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from minimascope.io import locked
        with locked({str(out)!r}, "run directory"):
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        started = time.monotonic()
        result = invoke("train", *TINY, "--seed", "1", "--data", cifar_source, "--out", str(out))
        assert_one_line_error(result, f"run directory {out} is in use by pid {holder.pid} on ")
        assert time.monotonic() - started < 10
        assert snapshot(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases the lock: no stale lock
        holder.wait()
    result = invoke("train", *TINY, "--seed", "1", "--data", cifar_source, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert runs.read_run_json(out)["status"] == "completed"


def test_init_from_non_finite_weights_is_refused(tmp_path: Path, cifar_source: str) -> None:
    model = models.build_model("resnet18", seed=0)
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    io.atomic_torch_save(tmp_path / "checkpoint.pt", {"weights": models.weights_payload(model, "resnet18", 10, {})})
    result = invoke("train", *TINY, "--data", cifar_source, "--init-from", str(tmp_path / "checkpoint.pt"),
                    "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "holds non-finite values in 1 tensor(s) (first layer1.0.conv1.weight)")
    assert not (tmp_path / "run").exists()
    result = invoke("compare", str(tmp_path / "checkpoint.pt"), str(tmp_path / "checkpoint.pt"), "--data",
                    cifar_source, "--out", str(tmp_path / "cmp"))
    assert_one_line_error(result, "non-finite values")


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory: pytest.TempPathFactory, cifar_source: str) -> tuple[Path, str]:
    """One batch, then a step so large that the weights overflow: the train loss was finite, the
    test loss is not."""
    out = tmp_path_factory.mktemp("diverged") / "run"
    result = invoke("train", "--epochs", "2", "--train-subset", "50", "--test-subset", "50", "--batch-size", "50",
                    "--lr", "1e38", "--momentum", "0", "--std-multiplier", "1e30", "--data", cifar_source,
                    "--out", str(out))
    return out, result.output


def test_non_finite_test_loss_is_divergence_with_its_own_exit_status(diverged_run, cifar_source: str) -> None:
    out, output = diverged_run
    record = runs.read_run_json(out)
    assert record["status"] == "diverged" and record["diverged_epoch"] == 1, record
    assert record["diverged_loss"] == "test loss"
    assert "diverged" in output and "no final weights" in output
    assert not (out / "final.pt").exists() and (out / "initial.pt").exists()
    result = invoke("train", "--epochs", "2", "--train-subset", "50", "--test-subset", "50", "--batch-size", "50",
                    "--lr", "1e38", "--momentum", "0", "--std-multiplier", "1e30", "--data", cifar_source,
                    "--out", str(out), "--resume")
    assert result.exit_code == 3, result.output  # still diverged, left as it is
    result = invoke("compare", str(out), str(out), "--data", cifar_source, "--out", str(out.parent / "cmp"))
    assert_one_line_error(result, f"run {out} diverged, no final weights")


def test_validation_and_test_losses_are_checked(cifar_source: str, tmp_path: Path, monkeypatch) -> None:
    from minimascope import train as train_module

    real = train_module.evaluate

    def nan_validation(model, images, labels, normalization, batch_size):
        loss, accuracy = real(model, images, labels, normalization, batch_size)
        return float("nan"), accuracy

    monkeypatch.setattr(train_module, "evaluate", nan_validation)
    result = invoke("train", *TINY, "--val-size", "20", "--data", cifar_source, "--out", str(tmp_path / "run"))
    assert result.exit_code == 3, result.output
    record = runs.read_run_json(tmp_path / "run")
    assert record["status"] == "diverged" and record["diverged_loss"] == "validation loss"
    assert not (tmp_path / "run" / "metrics.csv").exists()  # the diverged epoch is not recorded as good


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, cifar_source: str) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = invoke("train", *TINY, "--data", cifar_source, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_compare_never_writes_into_a_run_or_over_another_pair(finished_run: Path, cifar_source: str,
                                                              tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    io.atomic_torch_save(other, models.weights_payload(models.build_model("resnet18", seed=5), "resnet18", 10,
                                                       {"std_multiplier": [1.0, 1.0, 1.0]}))
    fast = ["--layers", "conv1,fc", "--samples", "100", "--data", cifar_source]
    before = snapshot(finished_run)
    result = invoke("compare", str(finished_run), str(other), *fast, "--out", str(finished_run / "cmp"))
    assert_one_line_error(result, f"is inside run directory {finished_run}")
    assert snapshot(finished_run) == before

    out = tmp_path / "cmp"
    result = invoke("compare", str(finished_run), str(other), *fast, "--measures", "cka", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "comparison.json").read_text())
    assert record["format"] == "minimascope-comparison-v1" and record["measures"] == ["cka"]
    assert record["a"]["weights_sha256"] == models.file_sha256(finished_run / "final.pt")
    assert record["b"]["weights_sha256"] == models.file_sha256(other)
    # The same pair may gain a measure ...
    result = invoke("compare", str(finished_run), str(other), *fast, "--measures", "procrustes", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "comparison.json").read_text())["measures"] == ["cka", "procrustes"]
    assert (out / "cka.json").exists() and (out / "procrustes.json").exists()
    # ... but another pair, other settings or another folder's files are refused, before any computation.
    before = snapshot(out)
    result = invoke("compare", str(other), str(other), *fast, "--out", str(out))
    assert_one_line_error(result, "holds a comparison of")
    result = invoke("compare", str(finished_run), str(other), *fast[:2], "--samples", "50", "--data", cifar_source,
                    "--out", str(out))
    assert_one_line_error(result, "other settings (differs in: samples)")
    assert snapshot(out) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert_one_line_error(invoke("compare", str(other), str(other), *fast, "--out", str(tmp_path / "notes")),
                          "holds files but no comparison.json")
    (tmp_path / "file").write_text("keep me")
    assert_one_line_error(invoke("compare", str(other), str(other), *fast, "--out", str(tmp_path / "file")),
                          "is a file")
    assert (tmp_path / "file").read_text() == "keep me" and (tmp_path / "notes" / "mine.txt").exists()


def test_initial_weights_and_test_predictions(finished_run: Path, cifar_source: str) -> None:
    initial = io.load_torch_file(finished_run / runs.INITIAL_WEIGHTS)
    fresh = models.build_model("resnet18", seed=0).state_dict()
    assert initial["format"] == models.WEIGHTS_FORMAT
    assert all(torch.equal(initial["state_dict"][k], fresh[k]) for k in fresh)
    predictions = runs.read_predictions(finished_run)
    cifar = data.load("cifar10", cifar_source)
    expected_index = data.balanced_subset(cifar.test_labels, 50, seed=0)
    assert torch.equal(predictions["test_index"], expected_index)
    assert torch.equal(predictions["labels"], cifar.test_labels[expected_index])
    model, payload = models.load_trained(finished_run)
    normalization = data.Normalization(**{k: tuple(v) for k, v in payload["normalization"].items()})
    with torch.no_grad():
        logits = model.eval()(normalization(cifar.test_images[expected_index]))
    assert torch.equal(predictions["predicted"], logits.argmax(1))
    accuracy = (predictions["predicted"] == predictions["labels"]).double().mean().item()
    assert accuracy == runs.read_run_json(finished_run)["final"]["test_accuracy"]


# ----------------------------------------------------------------------------- faults of the environment


def test_cache_under_a_file_or_read_only(tmp_path: Path, cifar_source: str, monkeypatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MINIMASCOPE_CACHE", str(tmp_path / "a-file" / "cache"))
    result = invoke("train", *TINY, "--data", cifar_source, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "set MINIMASCOPE_CACHE to a writable folder")
    assert str(tmp_path / "a-file" / "cache") in result.output.replace("\n", "")
    assert not (tmp_path / "run").exists()

    read_only = tmp_path / "ro"
    read_only.mkdir()
    monkeypatch.setenv("MINIMASCOPE_CACHE", str(read_only))
    monkeypatch.setattr(data.os, "access", lambda path, mode: Path(path) != read_only)  # root writes anywhere
    result = invoke("train", *TINY, "--data", cifar_source, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, f"CIFAR-10 cache folder {read_only} is not writable")
    assert not (tmp_path / "run").exists() and not list(read_only.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path: Path, private_cache: Path, damage: str) -> None:
    make_image_tree(tmp_path / "tree")
    expected = data.load("cifar10", tmp_path / "tree")
    (cache,) = [p for p in private_cache.glob("cifar10-*.npz") if data._cached_source(p) == str(
        (tmp_path / "tree").resolve())]
    content = cache.read_bytes()
    cache.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"\0" * len(content))
    result = invoke("train", "--epochs", "1", "--batch-size", "50", "--data", str(tmp_path / "tree"),
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert f"warning: CIFAR-10 cache {cache} is damaged" in result.output.replace("\n", "")
    assert cache.read_bytes() == content  # rebuilt
    assert data.load("cifar10", tmp_path / "tree").train_images.equal(expected.train_images)


def test_full_disk_keeps_the_last_checkpoint_and_resume_cleans_up(cifar_source: str, tmp_path: Path,
                                                                  monkeypatch) -> None:
    out = tmp_path / "run"
    args = ["train", "--epochs", "2", "--train-subset", "100", "--test-subset", "50", "--batch-size", "50",
            "--data", cifar_source, "--out", str(out)]
    real_replace = os.replace

    def full_on_second_checkpoint(source, target):
        if Path(target).name == "checkpoint.pt" and Path(target).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_on_second_checkpoint)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "epoch 1/2" in result.stdout  # then one line on stderr
    assert_one_error_line(result.stderr, f"cannot write {out / 'checkpoint.pt'}: No space left on device; the "
                                         f"last finished epoch's checkpoint is kept")
    assert "--resume" in result.stderr
    assert io.load_torch_file(out / "checkpoint.pt")["epoch"] == 1
    assert runs.read_run_json(out)["status"] == "running"
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(os, "replace", real_replace)
    # A killed write's temporaries (say of an 85 MB checkpoint) go on resume.
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"\0" * 1000)
    (out / ".final.pt.k1ll3d.tmp").write_bytes(b"\0" * 1000)
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert runs.read_run_json(out)["status"] == "completed"
    assert not list(out.glob(".*.tmp"))


def test_read_only_output_folder_is_one_line_and_leaves_nothing(cifar_source: str, tmp_path: Path,
                                                                monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    result = invoke("train", *TINY, "--data", cifar_source, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, f"cannot write {tmp_path / 'run' / 'run.json'}: Read-only file system; no epoch "
                                  f"had finished")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- options and messages


@pytest.mark.parametrize("option, pattern", [
    (["--hessian-power", "5"], "hessian_power: must be in (0, 1], got 5.0"),
    (["--betas", "2,3"], "betas: must be two numbers in [0, 1), got 2.0,3.0"),
    (["--block-stat", "median"], "block_stat: unknown 'median'; choose one of abs_mean, signed_mean"),
    (["--lr", "-1"], "lr: must be >= 0, got -1.0"),
    (["--weight-decay", "-0.1"], "weight_decay: must be >= 0, got -0.1"),
    (["--momentum", "-2"], "momentum: must be >= 0, got -2.0"),
    (["--eps", "-1e-8"], "eps: must be >= 0, got -1e-08"),
])
def test_bad_hyperparameters_fail_before_any_heavy_import(tmp_path: Path, option: list[str], pattern: str) -> None:
    done = run_python("""
        import sys
        from minimascope.cli import main
        sys.argv = ["minimascope", "train", "--optimizer", "adahessian", *sys.argv[1:]]
        try:
            main()
        except SystemExit as exit:
            print(exit.code, "torch" in sys.modules)
        """, *option, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"))
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert_one_error_line(done.stderr, pattern)
    assert not (tmp_path / "run").exists()


def test_block_stats_match_the_optimizer() -> None:
    from minimascope import optim

    assert BLOCK_STATS == optim.BLOCK_STATS
    TrainConfig(optimizer="adahessian", hessian_power=0.5, betas=(0.0, 0.5), eps=0.0, block_stat="signed_mean")


USAGE_ERRORS = [
    (["train", "--epochs", "ten"], "Invalid value for '--epochs': Input should be a valid integer"),
    (["compare", "a-run"], "Missing argument 'run_b'"),
    (["train", "--epoch", "3"], "No such option: --epoch"),
    (["cache", "--clean"], "No such option: --clean"),
]


@pytest.mark.parametrize("args, pattern", USAGE_ERRORS)
def test_usage_errors_are_one_line_through_the_app(args: list[str], pattern: str) -> None:
    result = CliRunner().invoke(app, args)
    assert_one_line_error(result, pattern)


def test_usage_errors_are_one_line_through_the_entry_point() -> None:
    script = Path(sys.executable).parent / "minimascope"
    entry_points = [[sys.executable, "-m", "minimascope.cli"]] + ([[str(script)]] if script.exists() else [])
    for command in entry_points:
        for args, pattern in USAGE_ERRORS:
            done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120,
                                  env=os.environ.copy())
            assert done.returncode == 2, (command, args, done.stderr)
            assert_one_error_line(done.stderr, pattern)
            assert "╭" not in done.stderr + done.stdout


def test_colliding_milestones_warn(cifar_source: str, tmp_path: Path) -> None:
    result = invoke("train", "--epochs", "2", "--milestones", "0.6,0.7", "--train-subset", "50", "--test-subset",
                    "50", "--batch-size", "50", "--data", cifar_source, "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "warning: milestones [0.6, 0.7] fall on epochs [1, 1] of 2" in " ".join(result.output.split())


def test_grayscale_images_are_counted(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "tree")
    for name in ("0000.png", "0001.png"):
        path = tmp_path / "tree" / "train" / "cat" / name
        Image.open(path).convert("L").save(path)
    result = invoke("train", "--epochs", "1", "--batch-size", "50", "--data", str(tmp_path / "tree"),
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "warning: 2 of 60 images were not RGB (2 L; L is grayscale) and were converted to RGB" in \
        " ".join(result.output.split())


def test_bad_images_and_archives_give_the_reason_in_one_line(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "0000.png").write_bytes(b"not an image")
    result = invoke("train", *TINY, "--data", str(tmp_path / "tree"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "cannot decode image train/cat/0000.png: not an image format PIL recognises")
    make_image_tree(tmp_path / "tree2")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    (tmp_path / "tree2" / "test" / "dog" / "0000.png").unlink()
    (tmp_path / "tree2" / "test" / "dog" / "0000.jpg").write_bytes(good.read_bytes()[:200])
    result = invoke("train", *TINY, "--data", str(tmp_path / "tree2"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "cannot decode image test/dog/0000.jpg: Truncated File Read")
    assert "BytesIO" not in result.output
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b this is no archive" * 50)
    result = invoke("train", *TINY, "--data", str(tmp_path / "junk.tar.gz"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "corrupt or truncated archive")
    assert not (tmp_path / "run").exists()


def test_missing_run_directory_is_named(tmp_path: Path, cifar_source: str) -> None:
    missing = tmp_path / "runs" / "sgd-seed0"
    result = invoke("compare", str(missing), str(missing), "--data", cifar_source, "--out", str(tmp_path / "c"))
    assert_one_line_error(result, f"no run directory or weights file at {missing}")


def test_failing_eigen_decomposition_names_the_layer(tmp_path: Path, cifar_source: str, monkeypatch) -> None:
    path = tmp_path / "w.pt"
    io.atomic_torch_save(path, models.weights_payload(models.build_model("resnet18", seed=0), "resnet18", 10,
                                                      {"std_multiplier": [1.0, 1.0, 1.0]}))

    def failing(matrix):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    result = invoke("compare", str(path), str(path), "--layers", "fc", "--measures", "svcca", "--samples", "50",
                    "--data", cifar_source, "--out", str(tmp_path / "cmp"))
    assert result.exit_code == 2, result.output
    assert_one_error_line(result.stderr, "eigen-decomposition of layer 'fc' failed")  # after the progress bars
    assert not (tmp_path / "cmp").exists()


# ----------------------------------------------------------------------------- caches


def test_cache_command_lists_and_clears(tmp_path: Path, private_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINIMASCOPE_CACHE", str(tmp_path / "cache"))
    assert "no caches in" in invoke("cache").output
    make_image_tree(tmp_path / "tree")
    progress = []
    data.load("cifar10", make_archive(tmp_path / "tree", tmp_path / "c.tar.gz"),
                      progress=lambda stage, done, total: progress.append((stage, done, total)))
    size = (tmp_path / "c.tar.gz").stat().st_size
    assert progress[-2:] == [("reading archive", size, size), ("decoding images", 60, 60)]
    (tmp_path / "cache" / ".cifar10-0123.npz.x.tmp").write_bytes(b"\0" * 100)
    result = invoke("cache")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert str((tmp_path / "c.tar.gz").resolve()) in text and "left by an interrupted decode" in text
    assert "total" in text and " MB" in text
    result = invoke("cache", "--clear")
    assert result.exit_code == 0 and "removed" in result.output
    assert not list((tmp_path / "cache").iterdir())
