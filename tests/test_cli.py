"""The ``metavote`` command, called in-process (and once as a real process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metavote.data as mvdata
from helpers import REPO, synthetic_dataset, tiny_backbone_file
from metavote.cli import main
from metavote.data import write_npz_dataset
from metavote.models import cifar_resnet18, load_weights, save_weights


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Commands call set_threads(); keep them (and this process) on one thread."""
    monkeypatch.setenv("METAVOTE_THREADS", "1")
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset()


@pytest.fixture
def folder(tmp_path, dataset):
    return write_npz_dataset(dataset, tmp_path / "toy")


def run_ok(capsys, argv) -> list[str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Traceback" not in err
    return out.splitlines()


def run_error(capsys, argv) -> str:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("metavote: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_help_in_a_real_process():
    exe = Path(sys.executable).parent / "metavote"
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "metavote"
    if not exe.exists():
        pytest.skip(f"the metavote console script is not installed ({exe})")
    proc = subprocess.run([str(exe), "pretrain", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--width" in proc.stdout and "--fresh" in proc.stdout and proc.stdout.startswith("usage: metavote pretrain")


HEAVY = ("torch", "numpy", "transformers", "safetensors", "PIL")


def test_the_parser_and_every_help_import_nothing_heavy():
    """`metavote --help` is instant: building the parser (and printing any help) loads no torch."""
    code = ("import contextlib, io, sys, metavote.cli\n"
            "parser = metavote.cli.build_parser()\n"
            "for argv in ([], ['prune'], ['export'], ['predict'], ['zoo', 'build'], ['study', 'overlap'], ['bench']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        parser.parse_args([*argv, '--help'])\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_torch_free_method_keys_equal_the_registry():
    from metavote.methods import METHODS
    from metavote.names import METHOD_KEYS

    assert sorted(METHOD_KEYS) == sorted(METHODS) and len(set(METHOD_KEYS)) == len(METHOD_KEYS)


def test_import_metavote_is_lazy_and_exports_every_name():
    code = ("import sys, metavote\n"
            f"assert not [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}], 'import metavote loaded torch'\n"
            "from metavote import Zoo, load_pruned, METHODS, wrap_model, MetavoteError\n"
            "assert all(getattr(metavote, n) is not None for n in metavote.__all__) and set(metavote.__all__) <= set(dir(metavote))\n"
            "assert metavote.Zoo is Zoo and metavote.data.load_dataset is metavote.load_dataset and 'ifp' in METHODS\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    import metavote

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        metavote.no_such_name  # noqa: B018


def _leaf_commands(parser, prefix=()):
    """Every runnable subcommand: ``("zoo", "build")`` -> its parser."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_commands(sub, (*prefix, name))


RUN_A_MODEL = [("pretrain",), ("evaluate",), ("zoo", "build"), ("similarity",), ("study", "overlap"), ("prune",), ("bench",), ("ablate",),
               ("export",), ("predict",), ("demo",)]


def test_every_command_that_runs_a_model_takes_threads_and_device():
    from metavote.cli import build_parser

    commands = dict(_leaf_commands(build_parser()))
    for name in RUN_A_MODEL:
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert "--threads" in options, name
        # export runs on the CPU only: its check compares PyTorch with ONNX Runtime's CPU provider
        assert ("--device" in options) == (name != ("export",)), name


@pytest.mark.parametrize("argv", [["export", "--model", "m.safetensors", "--onnx", "."], ["predict", "--model", "m.safetensors", "x.png"]])
def test_export_and_predict_apply_threads(capsys, monkeypatch, argv):
    import metavote.training

    calls = []
    monkeypatch.setattr(metavote.training, "set_threads", calls.append)
    run_error(capsys, [*argv, "--threads", 3])  # fails after setting the threads (no such model file / a directory)
    assert calls == [3]


# ----------------------------------------------------------------------------- errors


def test_tasks_n_too_large(capsys, folder):
    line = run_error(capsys, ["tasks", "--dataset", folder, "--n-way", 500])
    assert "500" in line and "2..6" in line


def test_evaluate_garbage_weights(capsys, folder, tmp_path):
    weights = tmp_path / "garbage.safetensors"
    weights.write_bytes(b"\x00garbage" * 40)
    line = run_error(capsys, ["evaluate", "--weights", weights, "--dataset", folder, "--threads", 1])
    assert str(weights) in line


def test_evaluate_garbage_pt_weights(capsys, folder, tmp_path):
    weights = tmp_path / "garbage.pt"
    weights.write_bytes(b"\x80\x02garbage" + bytes(100))
    run_error(capsys, ["evaluate", "--weights", weights, "--dataset", folder, "--threads", 1])


def test_evaluate_missing_weights(capsys, folder, tmp_path):
    line = run_error(capsys, ["evaluate", "--weights", tmp_path / "nope.safetensors", "--dataset", folder])
    assert "does not exist" in line


def test_pretrain_nonexistent_dataset(capsys, tmp_path):
    line = run_error(capsys, ["pretrain", "--dataset", "/nonexistent/folder", "--out", tmp_path / "x.safetensors", "--quiet"])
    assert "/nonexistent/folder" in line and "not found" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_evaluate_checkpoint_of_mismatching_width(capsys, folder, tmp_path, dataset):
    weights = save_weights(
        tmp_path / "w.safetensors", cifar_resnet18(width=0.25, num_classes=dataset.num_classes), {"arch": "cifar_resnet18", "width": 0.125}
    )
    line = run_error(capsys, ["evaluate", "--weights", weights, "--dataset", folder, "--threads", 1])
    assert "shape mismatch" in line


def test_evaluate_head_of_another_size(capsys, folder, tmp_path):
    weights = tiny_backbone_file(tmp_path / "b.safetensors", synthetic_dataset(num_classes=4))
    line = run_error(capsys, ["evaluate", "--weights", weights, "--dataset", folder, "--threads", 1])
    assert "4-way head" in line and "6 classes" in line


def test_unknown_class_name(capsys, folder, tmp_path, dataset):
    weights = tiny_backbone_file(tmp_path / "b.safetensors", dataset)
    line = run_error(capsys, ["evaluate", "--weights", weights, "--dataset", folder, "--classes", "class_a,class_bb"])
    assert "did you mean" in line


def test_bad_pretrain_config(capsys, folder, tmp_path):
    line = run_error(capsys, ["pretrain", "--dataset", folder, "--width", 0, "--out", tmp_path / "x.safetensors", "--quiet"])
    assert "width" in line


def test_keyboard_interrupt_exit_130(capsys, folder, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mvdata, "load_dataset", interrupted)
    assert main(["data", "info", "--dataset", str(folder)]) == 130
    assert "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------- commands


def test_pretrain_tiny(capsys, folder, tmp_path, dataset):
    out = tmp_path / "tmp" / "x.safetensors"
    lines = run_ok(capsys, ["pretrain", "--dataset", folder, "--width", 0.125, "--epochs", 1, "--batch-size", 8,
                            "--lr", 0.02, "--out", out, "--quiet", "--threads", 1, "--device", "cpu"])
    assert out.exists()
    assert len(lines) == 2 and lines[-1].startswith(f"wrote {out} (test top-1 ") and "on 24 test images" in lines[-1]
    state, meta = load_weights(out)
    assert meta["width"] == 0.125 and meta["classes"] == dataset.classes and meta["epochs"] == 1
    assert state["conv1.weight"].shape[0] == 8 and state["fc.weight"].shape[0] == 6
    # the trained file evaluates through the CLI, on the whole split and on a task of its classes
    lines = run_ok(capsys, ["evaluate", "--weights", out, "--dataset", folder, "--threads", 1])
    acc = meta["test_acc"]
    assert lines[-1] == f"top-1 {acc:.2%} on 24 test images of cifar100"
    lines = run_ok(capsys, ["evaluate", "--weights", out, "--dataset", folder, "--classes", "class_c,class_a"])
    assert re.fullmatch(r"top-1 \d+\.\d\d% on 8 test images of task [0-9a-f]{12} \(cifar100: class_a, class_c\)", lines[-1])


def test_pretrain_quick_subset(capsys, folder, tmp_path, dataset):
    out = tmp_path / "sub.safetensors"
    run_ok(capsys, ["pretrain", "--dataset", folder, "--width", 0.125, "--epochs", 1, "--batch-size", 4, "--num-classes", 3,
                    "--max-per-class", 4, "--out", out, "--quiet"])
    state, meta = load_weights(out)
    assert meta["classes"] == dataset.classes[:3] and state["fc.weight"].shape[0] == 3


def test_tasks_prints_requested_count(capsys, folder, dataset):
    lines = run_ok(capsys, ["tasks", "--dataset", folder, "--n-way", 3, "--count", 4, "--seed", 7])
    assert len(lines) == 4 and len(set(lines)) == 4
    for line in lines:
        m = re.fullmatch(r"([0-9a-f]{12}) \(cifar100: (.*)\)", line)
        assert m, line
        classes = m.group(2).split(", ")
        assert len(classes) == 3 and classes == sorted(classes) and set(classes) <= set(dataset.classes)
    assert run_ok(capsys, ["tasks", "--dataset", folder, "--n-way", 3, "--count", 4, "--seed", 7]) == lines
    assert run_ok(capsys, ["tasks", "--dataset", folder, "--n-way", 2, "--count", 0]) == []
    some = dataset.classes[1:5]
    lines = run_ok(capsys, ["tasks", "--dataset", folder, "--n-way", 3, "--count", 4, "--classes", ",".join(some)])
    assert len(set(lines)) == 4 and all(set(line.split("(cifar100: ")[1][:-1].split(", ")) <= set(some) for line in lines)  # all C(4, 3)


def test_a_closed_pipe_ends_the_command_quietly(folder):
    """`metavote tasks ... | head -1`: the reader leaves early; no traceback, the shell's SIGPIPE status."""
    child = subprocess.Popen([sys.executable, "-m", "metavote.cli", "tasks", "--dataset", str(folder), "--n-way", "3", "--count", "20"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # before the child prints anything: its first flush meets a closed pipe
    assert child.wait(timeout=120) == 141 and child.stderr.read() == b""


def test_data_info(capsys, folder, dataset):
    lines = run_ok(capsys, ["data", "info", "--dataset", folder])
    assert lines[0] == "cifar100: 6 classes, 72 train / 24 test images of 32x32"
    assert lines[1] == "classes: " + ", ".join(dataset.classes)
