"""Shared bits of the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def save(name: str, rows: list[dict] | dict, table: str) -> None:
    """Write results as JSON (with the command and machine) and print the markdown table."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"command": shlex.join(["python", *sys.argv]), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "results": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(f"`{payload['command']}` — {payload['machine']}, {payload['date']}\n\n{table}\n")
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


def md_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
