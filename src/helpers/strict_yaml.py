"""YAML read strictly: profiles (``params/*.yaml``) and ``-p key=value`` values mean what they say, or are refused.

``yaml.safe_load`` reads YAML 1.1, which turns text a person wrote into other values without a word: a key written
twice keeps the last value; ``010`` is the octal 8; ``on``, ``yes``, ``no``, ``off`` are booleans (a run named ``on``
becomes ``True``, the language code ``no`` becomes ``False``); ``1e-4`` is a string; ``1:30`` is 90; and aliases
expand without bound (a few hundred bytes of nested aliases, the "billion laughs", take a minute and all memory
before failing). :func:`load` reads instead:

* booleans: ``true`` / ``false`` only (any case, as YAML 1.2); ``on``, ``yes``, ``no``, ``off`` stay text;
* integers as written in decimal (``-3``; ``1_000``, ``0x10``, ``0o10`` stay text, which an integer parameter
  refuses); a number with a leading zero (``010``) is refused rather than guessed (write ``10``, or quote it for
  text);
* floats as YAML 1.2 writes them (``1e-4``, ``0.5``, ``.inf``); sexagesimal ``1:30`` stays text;
* a mapping key written twice is refused, naming its line; every key must be text (``1:``, ``true:``, ``null:`` are
  refused);
* anchors and aliases are refused: a profile is a handful of settings, and refusing them is what bounds its size.

Every refusal is a :class:`Refused` (a :class:`yaml.MarkedYAMLError`: the message names the line): the callers turn
it into a :class:`helpers.config.ConfigError` naming the file or the override.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode


class Refused(yaml.MarkedYAMLError):
    """Valid YAML that a profile must not hold (a key written twice, an alias, a number with a leading zero, a key
    that is not text); the message says what and where."""


_DROPPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_LEADING_ZERO = "tag:helpers,2026:leading-zero"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's booleans and numbers, no duplicate or non-text keys, and no aliases."""

    yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise Refused(None, None, f"alias *{event.anchor} refused: profiles take no "
                                              "anchors or aliases (write each value out)", event.start_mark)
        if self.check_event(yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent):
            event = self.peek_event()
            if event.anchor is not None:
                raise Refused(None, None, f"anchor &{event.anchor} refused: profiles take no "
                                                  "anchors or aliases (write each value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self.flatten_mapping(node)  # '<<' merge keys (refused with their aliases above)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise Refused(None, None, f"key {key!r} ({type(key).__name__}) at line {line}: keys "
                                           "must be names (text); quote it", key_node.start_mark)
                if key in seen:
                    raise Refused(None, None, f"key {key!r} is written twice, at lines {seen[key]} and "
                                           f"{line}; keep one", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_leading_zero(self, node: Any) -> Any:
        sign, digits = node.value[:1].strip("0123456789"), node.value.lstrip("+-")
        raise Refused(None, None, f"number {node.value!r} has a leading zero (YAML 1.1 would read it as octal); "
                      f"write {sign}{digits.lstrip('0') or '0'} without the zeros, or quote it for text",
                      node.start_mark)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
StrictLoader.add_implicit_resolver(_LEADING_ZERO, re.compile(r"^[-+]?0[0-9]+$"), list("-+0"))
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                   list("-+0123456789"))
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))
StrictLoader.add_constructor(_LEADING_ZERO, StrictLoader.construct_leading_zero)


def load(text: str) -> Any:
    """``text`` read as :class:`StrictLoader` reads it (raises :class:`yaml.YAMLError` when it refuses)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
