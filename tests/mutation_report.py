"""The mutation score per module, from the results ``mutmut run`` left in ``mutants/`` (``make mutation`` runs both).

Writes ``artifacts/mutation/report.md`` (the table, then every surviving mutant as a diff) and
``artifacts/mutation/report.json`` (the counts and the survivors' names), and prints the table. Run from the
repository root, after ``mutmut run``::

    python tests/mutation_report.py [--seconds N] [--out artifacts/mutation]

Statuses are mutmut's: *killed* (a test failed; timeouts count as killed), *survived* (every test that runs the
mutated function passed), *no tests* (no test of the selection runs that function). Score = killed / mutants;
"score (tested)" leaves the *no tests* mutants out. "Text only": survivors that changed nothing but the contents of
a string literal (a claim's wording, an error message), told apart by a regular expression, so a rough guide.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check"}
STRING = re.compile(r"""[rbfuRBFU]{0,2}("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def text_only(diff: str) -> bool:
    """True when the mutant changed nothing but the contents of string literals (wording, messages, labels)."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    blank = lambda lines: [STRING.sub('""', line) for line in lines]  # noqa: E731
    return bool(removed) and blank(removed) == blank(added)


def module_of(meta_path: Path) -> str:
    """``mutants/src/helpers/chapters/dynamics.py.meta`` -> ``helpers.chapters.dynamics``."""
    parts = meta_path.relative_to(Path("mutants") / "src").with_suffix("").with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def collect() -> tuple[dict[str, Counter], dict[str, list[tuple[str, str, str]]]]:
    """Counts of each status per module, and the (mutant, diff, status) of each survivor per module."""
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for meta in sorted(Path("mutants", "src").rglob("*.py.meta")):
        source = str(meta.relative_to("mutants")).removesuffix(".meta")
        data = SourceFileMutationData(path=source)
        data.load()
        module = module_of(meta)
        for name, code in sorted(data.exit_code_by_key.items(), key=lambda kv: _natural(kv[0])):
            status = status_by_exit_code[code]
            status = "killed" if status in KILLED else status
            if status in ("survived", "no tests"):
                diff = get_diff_for_mutant(name, path=source)
                if status == "survived" and text_only(diff):
                    counts[module]["survived (text only)"] += 1
                survivors[module].append((name, diff, status))
            counts[module][status] += 1
    return counts, survivors


def _natural(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def by_function(survivors: dict[str, list[tuple[str, str, str]]]) -> dict[str, Counter]:
    """Surviving and untested mutants per function (mutmut's name without the ``__mutmut_<n>`` suffix)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for entries in survivors.values():
        for name, diff, status in entries:
            out[name.rpartition("__mutmut_")[0]][status] += 1
            out[name.rpartition("__mutmut_")[0]]["text only"] += status == "survived" and text_only(diff)
    return out


def table(counts: dict[str, Counter]) -> list[dict]:
    rows = []
    total = Counter()
    for module in sorted(counts):
        total.update(counts[module])
        rows.append(_row(module, counts[module]))
    rows.append(_row("all", total))
    return rows


def _row(module: str, c: Counter) -> dict:
    n = sum(v for status, v in c.items() if status != "survived (text only)")
    tested = n - c["no tests"]
    other = n - c["killed"] - c["survived"] - c["no tests"]
    return {"module": module, "mutants": n, "killed": c["killed"], "survived": c["survived"],
            "of which text only": c["survived (text only)"], "no tests": c["no tests"], "other": other,
            "score": c["killed"] / n if n else float("nan"),
            "score (tested)": c["killed"] / tested if tested else float("nan")}


def _percent(x: float) -> str:
    return "-" if x != x else f"{x:.1%}"


def markdown_table(rows: list[dict]) -> str:
    head = "| module | mutants | killed | survived | of which text only | no tests | other | score | score (tested) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['of which text only']} "
                     f"| {r['no tests']} | {r['other']} | {_percent(r['score'])} | {_percent(r['score (tested)'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="wall time of the mutmut run, for the report")
    parser.add_argument("--out", type=Path, default=Path("artifacts") / "mutation")
    args = parser.parse_args(argv)
    if not Path("mutants").is_dir():
        parser.error("no mutants/ folder here: run `make mutation` (or `mutmut run`) from the repository root first")
    counts, survivors = collect()
    rows = table(counts)
    args.out.mkdir(parents=True, exist_ok=True)
    took = f" in {args.seconds:.0f} s" if args.seconds is not None else ""
    text = [f"# Mutation testing: score per module{took}", "", markdown_table(rows), "",
            "Statuses and commands: see the README's Contributing section. Each survivor below is a change to the "
            "code that no test of the selection noticed: add a test that fails on it, or say why it is harmless.", ""]
    text += ["## Survivors by function", "", "| function | survived | of which text only | no tests |",
             "|---|---:|---:|---:|"]
    for function, c in sorted(by_function(survivors).items()):
        text.append(f"| `{function}` | {c['survived']} | {c['text only']} | {c['no tests']} |")
    text.append("")
    for module in sorted(survivors):
        text += [f"## {module}", ""]
        for name, diff, status in survivors[module]:
            kind = "survived, text only" if status == "survived" and text_only(diff) else status
            text += [f"### `{name}` ({kind})", "", "```diff", diff, "```", ""]
    (args.out / "report.md").write_text("\n".join(text))
    (args.out / "report.json").write_text(json.dumps(
        {"seconds": args.seconds, "modules": rows,
         "survivors": {m: {name: status for name, _, status in s} for m, s in survivors.items()}}, indent=2))
    print(markdown_table(rows))
    print(f"\nReport with every surviving mutant's diff: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
