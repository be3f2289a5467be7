"""Shared bits of the benchmark scripts: machine description and result files.

The scripts live by topic (``benchmarks/<topic>/<script>.py``, the topics of ``docs/benchmarks/``) and run from the
project root (``python benchmarks/<topic>/<script>.py``); each puts ``benchmarks/`` on ``sys.path`` to import this
module, and writes its results beside itself, in ``benchmarks/<topic>/results/``."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def machine() -> str:
    """Cores, the CPU with the vector extensions that pick kernels (AVX2, AVX-512, VNNI, bf16, AMX), torch and its threads."""
    from metavote.cpu import cpu_name

    return f"{os.cpu_count()} cores ({cpu_name()}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def results_dir() -> Path:
    """The running script's results folder: ``benchmarks/<topic>/results/``, beside the script."""
    return Path(sys.argv[0]).resolve().parent / "results"


def save(name: str, rows: list[dict] | dict, table: str) -> None:
    """Write results as JSON (with the command and machine) to the script's results folder and print the markdown table."""
    results = results_dir()
    results.mkdir(exist_ok=True)
    payload = {"command": shlex.join(["python", *sys.argv]), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "results": rows}
    (results / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (results / f"{name}.md").write_text(f"`{payload['command']}` — {payload['machine']}, {payload['date']}\n\n{table}\n")
    print(table)


def zoo_context(zoo_path: str):
    """CIFAR-100, the default backbone and a zoo's IFP records: the set-up of the zoo benchmarks."""
    from metavote.data import load_dataset
    from metavote.models import load_backbone, locate_backbone
    from metavote.zoo import Zoo

    dataset = load_dataset("cifar100")
    backbone, _ = load_backbone(locate_backbone(), dataset=dataset)
    zoo = Zoo(zoo_path)
    return dataset, backbone, zoo, zoo.records(method="ifp")


def mean_se(values) -> str:
    """Accuracies (fractions) as "mean ± standard error" in percent; the mean alone for one value."""
    import numpy as np

    a = 100 * np.asarray(values, dtype=float)
    return f"{a.mean():.2f} ± {a.std(ddof=1) / np.sqrt(len(a)):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def paired(a: dict, b: dict) -> str:
    """Accuracies of two methods by task (fractions): "mean ± standard error (k of n ahead)" of a − b in points, over the
    tasks both ran."""
    import numpy as np

    d = 100 * np.array([a[t] - b[t] for t in a if t in b])
    return f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f} ({(d > 0).sum()} of {len(d)} ahead)"


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def take_turns(cells: dict, x, calls: int, rounds: int = 5, warmup: int = 10) -> dict[object, list[float]]:
    """Milliseconds per call of each callable of ``cells`` on ``x``: after ``warmup`` calls each, the cells take
    turns, ``calls`` calls each in every one of ``rounds`` rounds, so a slow spell of a shared machine falls on
    all of them alike."""
    import time
    from collections import defaultdict

    times = defaultdict(list)
    with torch.no_grad():
        for fn in cells.values():
            for _ in range(warmup):
                fn(x)
        for _ in range(rounds):
            for key, fn in cells.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    fn(x)
                    times[key].append((time.perf_counter() - start) * 1e3)
    return times


def batch_latency(cells: dict, runs: int, rounds: int = 5, batches=(1, 128), size: int = 32, **fields) -> list[dict]:
    """Rows of median and quartile ms per ``(model, runtime)`` cell at each batch size on random ``size`` px
    inputs (CIFAR's by default): ``runs`` calls per cell at batch 1, a tenth (at least 10) at larger batches,
    in turns (:func:`take_turns`); ``fields`` go into every row."""
    import numpy as np

    rows = []
    for batch in batches:
        x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
        calls = max(1, (runs if batch == 1 else max(10, runs // 10)) // rounds)
        for (model, runtime), t in take_turns(cells, x, calls, rounds, warmup=10 if batch == 1 else 2).items():
            q = np.percentile(t, [25, 50, 75])
            rows.append(fields | {"model": model, "runtime": runtime, "batch": batch, "median_ms": float(q[1]), "p25_ms": float(q[0]),
                                  "p75_ms": float(q[2]), "runs": len(t)})
            print(f"{fields or ''} batch {batch:>3}  {model:<8} {runtime:<18} {q[1]:8.3f} ms", flush=True)
    return rows


def train_step_seconds(model, batch: int, steps: int, size: int = 32, classes: int = 100) -> float:
    """Median seconds of one SGD training step of ``model`` on a random batch of ``size`` px images (after one warm-up step)."""
    import numpy as np
    import torch.nn.functional as F

    from metavote.training import sgd

    opt = sgd(model, 0.01)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 3, size, size, generator=gen), torch.randint(0, classes, (batch,), generator=gen)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return float(np.median(times))

