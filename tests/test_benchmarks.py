"""The benchmark scripts do not rot: each one's ``--help`` runs, and every script a page names exists.

The scripts live by topic, ``benchmarks/<topic>/<script>.py`` (the topics of ``docs/benchmarks/``), beside their
results. Every ``--help`` runs in one child process (``runpy``, as ``python benchmarks/<topic>/<script>.py --help``
runs it from the project root), so torch and metavote are imported once for all of them; shell scripts are
checked with ``bash -n``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
TOPICS = sorted(p.stem for p in (ROOT / "docs" / "benchmarks").glob("*.md") if p.stem not in ("index", "appendix-superseded"))

# Runs each script as `python SCRIPT --help` would (its folder first on sys.path, sys.argv[0] the script) and
# reports, per script, the exit code of --help, whether it printed a usage line, and the tail of what it printed.
_HELP_ALL = r"""
import contextlib, io, json, os, runpy, sys, traceback
report = {}
for script in sys.argv[1:]:
    out, saved_path, saved_argv = io.StringIO(), list(sys.path), list(sys.argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.argv = [script, "--help"]
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = "raised"
    sys.path[:], sys.argv[:] = saved_path, saved_argv
    report[script] = {"code": code, "usage": "usage:" in out.getvalue(), "output": out.getvalue()[-2000:]}
print(json.dumps(report))
"""


def scripts(suffix: str) -> list[Path]:
    return sorted(BENCHMARKS.glob(f"*/*{suffix}"))


def test_scripts_are_grouped_by_the_topics_of_the_docs():
    assert scripts(".py") and scripts(".sh")
    for path in [*scripts(".py"), *scripts(".sh")]:
        assert path.parent.name in TOPICS, f"{path.relative_to(ROOT)}: not in a topic folder of docs/benchmarks/ ({', '.join(TOPICS)})"
    assert [p.name for p in BENCHMARKS.glob("*.py")] == ["_common.py"], "only the shared helper stays in benchmarks/ itself"


def test_every_script_answers_help():
    # a script without a parser would run its whole job here: refuse it before running anything
    unparsed = [str(p.relative_to(ROOT)) for p in scripts(".py") if "argparse" not in p.read_text()]
    assert not unparsed, f"give these an argparse parser (at least --help): {', '.join(unparsed)}"
    names = [str(p.relative_to(ROOT)) for p in scripts(".py")]
    done = subprocess.run([sys.executable, "-c", _HELP_ALL, *names], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    bad = {name: r for name, r in report.items() if r["code"] != 0 or not r["usage"]}
    assert not bad, "\n\n".join(f"{name}: exit {r['code']}\n{r['output']}" for name, r in bad.items())


def test_shell_scripts_parse():
    for path in scripts(".sh"):
        done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"{path.relative_to(ROOT)}: {done.stderr}"


def test_every_benchmark_path_in_the_docs_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    named = re.compile(r"(?<![\w/.-])benchmarks/[\w./-]+?\.(?:py|sh)\b")
    missing = [f"{page.relative_to(ROOT)}: {path}" for page in pages for path in sorted(set(named.findall(page.read_text())))
               if not (ROOT / path).is_file()]
    assert not missing, "pages name benchmark scripts that do not exist:\n" + "\n".join(missing)
