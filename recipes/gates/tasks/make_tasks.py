"""Writes the data of the shipped downstream tasks, one jsonl file per task, next to this file.

Run it: python recipes/gates/tasks/make_tasks.py   (deterministic: the same files every time)

Every example is synthetic Python built here from a made-up vocabulary, so none is copied from a
training corpus (the contamination gate checks that), and every example is checked by compiling
it: the right answer makes valid Python and, in the multiple-choice tasks, each other choice makes
invalid Python. In the multiple-choice tasks every choice is the right one equally often within a
family, so a model blind to the context (one trained on shuffled tokens knows only how frequent
each token is) scores 1/3 exactly; a model that learnt some Python scores above.

- python_idioms: the mark that always follows a word (`self.`, `else:`, `len(`); a model that has
  learnt which token follows which beats chance clearly (the tiny recipe's, 150 steps: about 0.6).
- python_syntax: a bracket closed, the keyword a statement needs, `except` at its `try`'s indent;
  these need structure, beyond the tiny recipe's reach.
- python_completion: greedy completion of a line, exact match: a header's colon, closing brackets,
  `self.x = x` for the next `__init__` parameter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ("amber", "basalt", "cinder", "dapple", "ember", "fennel", "garnet", "hollow", "indigo", "juniper", "kestrel",
         "lichen", "marble", "nettle", "oriole", "pebble", "quartz", "russet", "sorrel", "thistle", "umber", "velvet",
         "willow", "yarrow", "zinnia", "bramble", "clover", "drizzle", "falcon", "gossamer")
VERBS = ("gather", "polish", "sprout", "weave", "ripen", "kindle", "fold", "stitch", "sift", "prune", "braid", "temper")
MODULES = ("self", "super()", "os", "sys", "re", "math", "json", "time", "random", "string", "struct", "shutil", "itertools")
BUILTINS = ("print", "len", "sorted", "range", "isinstance", "repr", "str", "int", "list", "dict", "set", "open", "tuple",
            "min", "max", "sum", "abs", "any", "all", "zip", "map", "enumerate", "getattr", "hasattr", "type", "iter",
            "next", "round", "format", "float")


def compiles(code: str) -> bool:
    """Whether Python compiles `code` (compiling, not only parsing, also refuses a `return` outside a function)."""
    try:
        compile(code, "<task>", "exec")
    except SyntaxError:  # IndentationError is one
        return False
    return True


def words(rng: random.Random) -> tuple[str, str, str, str]:
    """Three distinct names and a verb."""
    a, b, c = rng.sample(WORDS, 3)
    return a, b, c, rng.choice(VERBS)


# -- multiple choice. A family makes (context, choices, rests) for the index of the right answer:
# -- choice i followed by rests[i] must compile for the answer only.


def punctuation(rng: random.Random, answer: int) -> tuple[str, list[str], list[str]]:
    """A module or `self` takes `.`; `else`, `try`, a condition, a loop header take `:`; a builtin takes `(`.
    The lines before are drawn the same way whatever the answer: only the last word tells."""
    a, b, c, verb = words(rng)
    context = f"class {a.title()}:\n    def {verb}(self, {a}, {b}):\n        if {a}:\n            {c} = {b}\n"
    if answer == 0:
        line, rest = f"        {rng.choice(['return', f'{c} ='])} {rng.choice(MODULES)}", f"{b}\n"
    elif answer == 1:
        line = rng.choice(["        else", f"        elif {b}", f"        while {b}", f"        if {b} is None", f"        if not {b}",
                           f"        for {c} in {b}", f"        with open({b}) as {c}", "        try", f"        {c} = lambda"])
        rest = (f" {b}\n" if line.endswith("lambda") else f"\n            {c} = None\n"
                + ("        except ValueError:\n            pass\n" if line.endswith("try") else ""))
    else:
        line, rest = f"        {rng.choice(['return', f'{c} ='])} {rng.choice(BUILTINS)}", f"{a})\n"
    return context + line, [".", ":", "("], [rest] * 3


def brackets(rng: random.Random, answer: int) -> tuple[str, list[str], list[str]]:
    """Close what the line opened: a call, a list or a dict."""
    a, b, c, verb = words(rng)
    opened = [f"{c} = {verb}_{a}({a}, {b}", f"{c} = [{a}, {b}", f'{c} = {{"{a}": {a}, "{b}": {b}'][answer]
    return f"{a} = {rng.randint(2, 99)}\n{b} = {a} + {rng.randint(2, 9)}\n{opened}", [")", "]", "}"], ["\n"] * 3


def keywords(rng: random.Random, answer: int) -> tuple[str, list[str], list[str]]:
    """The keyword a statement needs next: for ... in, import ... as, from ... import."""
    a, b, _, verb = words(rng)
    started = [f"for {a}", f"import {a}", f"from {a}"][answer]
    rest = [f" {b}:\n        print({a})\n", f" {b}\n    return {b}\n", f" {b}\n    return {b}\n"][answer]
    return f"def {verb}_{a}({b}):\n    {started}", [" in", " as", " import"], [rest] * 3


def indentation(rng: random.Random, answer: int) -> tuple[str, list[str], list[str]]:
    """`except` goes at its `try`'s indentation: a `try` at the top level, in a function, in a method."""
    a, b, _, verb = words(rng)
    head = ["", f"def {verb}_{a}({b}):\n", f"class {a.title()}{b.title()}:\n    def {verb}(self, {b}):\n"][answer]
    indent = " " * 4 * answer
    levels = (0, 4, 8)
    return (f"{head}{indent}try:\n{indent}    {a} = {verb}({b})\n", [f"{' ' * n}except ValueError:" for n in levels],
            [f"\n{' ' * (n + 4)}{a} = None\n" for n in levels])


def multiple_choice(rng: random.Random, families: dict, per_family: int) -> list[dict]:
    rows = []
    for family, make in families.items():
        for number in range(per_family):
            answer = number % 3
            context, choices, rests = make(rng, answer)
            valid = [compiles(context + choice + rest) for choice, rest in zip(choices, rests)]
            assert valid == [i == answer for i in range(len(choices))], (family, context, choices, valid)
            rows.append({"family": family, "context": context, "choices": choices, "answer": answer})
    rng.shuffle(rows)
    return rows


# -- generation. A family makes (context, target) for a variant number: the context ends mid-line and the
# -- target is the rest of that line.


def colon(rng: random.Random, kind: int) -> tuple[str, str]:
    """A compound statement's header, complete but for its colon."""
    a, b, c, verb = words(rng)
    headers = ["    else", f"    elif {c}", f"    if {a} is None", f"    if not {b}", f"    while {a}", f"    for {c} in {b}",
               f"    with open({a}) as {c}", f"    def {verb}(self)", f"    class {a.title()}({b.title()})"]
    header = headers[kind % len(headers)]
    before = f"    if {b}:\n        {c} = {b}\n" if kind % len(headers) < 2 else ""
    return f"def {verb}_{a}({a}, {b}):\n{before}{header}", ":"


def closing(rng: random.Random, kind: int) -> tuple[str, str]:
    """Close what a line opened: a call, a list, a dict, the parameters of a definition, a condition's call."""
    a, b, c, verb = words(rng)
    n = rng.randint(2, 9)
    lines = [(f"    {c} = {verb}({a}, {b}", ")"), (f"    return [{a}, {b}", "]"), (f'    {c} = {{"{a}": {n}', "}"),
             (f"    for {c} in range({n}", "):"), (f"    if isinstance({a}, int", "):"), (f"    def {verb}(self, {a}", "):")]
    line, target = lines[kind % len(lines)]
    return f"def {verb}_{c}({a}, {b}):\n{line}", target


def attributes(rng: random.Random, kind: int) -> tuple[str, str]:
    """`self.x = x` for every parameter of `__init__`: the next line repeats the next parameter's name."""
    a, b, c, _ = words(rng)
    params = [a, b, c][: 2 + kind % 2]
    lines = "".join(f"        self.{p} = {p}\n" for p in params[:-1])
    return (f"class {a.title()}{b.title()}:\n    def __init__(self, {', '.join(params)}):\n{lines}        self.{params[-1]} =",
            f" {params[-1]}")


def generation(rng: random.Random, families: dict, per_family: int) -> list[dict]:
    rows = []
    for family, make in families.items():
        for number in range(per_family):
            context, target = make(rng, number)
            last = context.rsplit("\n", 1)[-1]
            body = "\n" + " " * (len(last) - len(last.lstrip()) + 4) + "pass" if target.endswith(":") else ""
            completed = context + target + body + "\n"
            assert compiles(completed), (family, completed)
            rows.append({"family": family, "context": context, "target": target})
    rng.shuffle(rows)
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def main() -> None:
    write(HERE / "python_idioms.jsonl", multiple_choice(random.Random(0), {"punctuation": punctuation}, 120))
    write(HERE / "python_syntax.jsonl", multiple_choice(random.Random(1), {"brackets": brackets, "keywords": keywords,
                                                                          "indentation": indentation}, 45))
    write(HERE / "python_completion.jsonl", generation(random.Random(2), {"colon": colon, "closing": closing,
                                                                          "attributes": attributes}, 60))


if __name__ == "__main__":
    main()
