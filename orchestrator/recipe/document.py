"""Read one YAML document of a recipe (a file, or an override's value) within bounds, then build it.

PyYAML builds whatever the text describes. An anchor used inside itself is an endless value; a few
aliases of aliases expand a 700-byte file into millions of values (a "billion laughs") that
validation and `orch sweep` then walk one by one; a 5,000-digit integer is a ValueError; a
`"\\udcff"` escape is a string no file can hold (the release that writes it fails); and a key
written twice keeps its last value without a word. Each is refused here, on the composed nodes
before anything is built, every node walked once, so the check costs no more than the text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.errors import Location, Problem, RecipeError

ALIAS_BUDGET = 10_000
"""Values aliases may add to a document beyond those written (what is written costs no more than its
text). The shipped recipes hold a few hundred values; ten thousand sweep choices already take
`orch validate` seconds to check one by one."""

_INT = "tag:yaml.org,2002:int"
_MERGE = "tag:yaml.org,2002:merge"


def read_document(text: str, source: str, prefix: str = "", lines: bool = True) -> tuple[Any, yaml.Node | None]:
    """The value of `text` and its root node (None for an empty document). Problems name their key
    (below `prefix`) and `source`, with the line when `lines` (a file; an override is one line).
    YAML syntax errors and RecursionError (nesting too deep to compose) are the caller's to word."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        walk = _Walk(source, lines)
        walk.size(root, prefix)
        if walk.over:
            node, path = walk.over
            walk.problems.append(Problem(path, f"YAML aliases expand this value to {walk.sizes[id(node)]:,} values, "
                                               f"more than {ALIAS_BUDGET:,} beyond those written: write them out", walk.at(node)))
        if walk.problems:
            raise RecipeError(walk.problems)
        return loader.construct_document(root), root
    finally:
        loader.dispose()


def not_text(value: str) -> str | None:
    """Why `value` cannot be written to a UTF-8 file (an undecodable byte of the command line, kept by
    Python as a lone surrogate, or a `\\uD800`-style escape), else None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not UTF-8 text: character {exc.start + 1} is {value[exc.start]!a}, an undecodable byte or a lone surrogate"
    return None


def printable(value: str, limit: int = 80) -> str:
    """`value` as an error line can show it: escaped where it is not text, shortened past `limit`."""
    shown = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(shown) <= limit else shown[:limit] + "..."


@dataclass
class _Walk:
    source: str
    lines: bool
    sizes: dict[int, int] = field(default_factory=dict)
    """Each node's expanded size, by id: a node reached again through an alias is counted, not walked."""
    open: set[int] = field(default_factory=set)
    aliased: int = 0
    """Values added by aliases so far: the sizes of the nodes reached again."""
    over: tuple[yaml.Node, str] | None = None
    """The first value walked, and so the smallest, to which aliases add more than ALIAS_BUDGET, with its key."""
    problems: list[Problem] = field(default_factory=list)

    def at(self, node: yaml.Node) -> Location:
        return Location(self.source, node.start_mark.line + 1 if self.lines else None)

    def size(self, node: yaml.Node, path: str) -> int:
        if id(node) in self.sizes:
            self.aliased += self.sizes[id(node)]
            return self.sizes[id(node)]
        aliased_before = self.aliased
        if id(node) in self.open:
            raise RecipeError([Problem("", "a YAML anchor is used inside itself (a recursive alias): write the value out", self.at(node))])
        self.open.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            total = 1
            self._check_scalar(node, path)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(self.size(item, _join(path, str(i))) for i, item in enumerate(node.value))
        else:
            self._check_keys(node, path)
            total = 1 + sum(self.size(key, path) + self.size(value, _join(path, _name(key))) for key, value in node.value)
        self.open.discard(id(node))
        self.sizes[id(node)] = total
        if self.aliased - aliased_before > ALIAS_BUDGET and self.over is None:
            self.over = (node, path)
        return total

    def _check_scalar(self, node: yaml.ScalarNode, path: str) -> None:
        why = not_text(node.value)
        if why:
            self.problems.append(Problem(path, why, self.at(node)))
        digits = node.value.lstrip("+-").replace("_", "")
        limit = sys.get_int_max_str_digits()
        if node.tag == _INT and digits.isdigit() and limit and len(digits) > limit:
            self.problems.append(Problem(path, f"a {len(digits):,}-digit integer is past any value a recipe takes "
                                               f"(Python reads at most {limit:,} digits)", self.at(node)))

    def _check_keys(self, node: yaml.MappingNode, path: str) -> None:
        """PyYAML keeps the last of a key written twice; a recipe says each key once."""
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                where = f" (lines {first.start_mark.line + 1} and {key.start_mark.line + 1})" if self.lines else ""
                self.problems.append(Problem(_join(path, _name(key)), f"written twice{where}: keep one", self.at(key)))


def _name(key: yaml.Node) -> str:
    return printable(key.value) if isinstance(key, yaml.ScalarNode) else "?"


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part
