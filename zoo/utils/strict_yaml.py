"""A strict YAML reader for files people write (recipes): safe types only, no duplicate keys, no anchors or aliases.

PyYAML's ``safe_load`` lets the last of two equal keys win silently (a recipe with two ``lr:`` trains with one of
them) and expands aliases, so eight nested anchors become a billion-entry structure once anything copies or prints
it. Neither has a use in a recipe, so both are errors that name the line. Written here because neither PyYAML nor
ruamel offers both checks as a loader option.
"""

from __future__ import annotations

from typing import Any

import yaml


class StrictYAMLError(ValueError):
    """A YAML document that parses but is refused; the message gives the line."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):  # noqa: D102  (PyYAML's hook for every node)
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise StrictYAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not supported here; write the value")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise StrictYAMLError(
                f"line {event.start_mark.line + 1}: YAML anchors (&{event.anchor}) are not supported here"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: D102
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: PyYAML's own construct_mapping refuses it with its message
                break
            if repeated:
                raise StrictYAMLError(f"line {line}: duplicate key {key!r} (first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_strict_yaml(text: str) -> Any:
    """Parse one YAML document with safe types, refusing duplicate keys, anchors and aliases (StrictYAMLError) and
    malformed YAML (yaml.YAMLError)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass: safe types only)
