"""Tokenization: one token per node plus BOS, SEP, DEMO, STOP.

Prompt "BOS s t", completion "y STOP" with y the path's nodes after s; a teacher context
prefixes "DEMO y' SEP" (theory.md §8).
"""
from __future__ import annotations

from dataclasses import dataclass

SPECIALS = ("BOS", "SEP", "DEMO", "STOP")


@dataclass(frozen=True)
class Vocab:
    nodes: tuple

    @classmethod
    def of(cls, graph) -> "Vocab":
        return cls(tuple(sorted(graph.nodes, key=str)))

    def __len__(self):
        return len(self.nodes) + len(SPECIALS)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def special(self, name: str) -> int:
        return self.n_nodes + SPECIALS.index(name)

    def node_id(self, v) -> int:
        return self._index[v]

    @property
    def _index(self):
        idx = self.__dict__.get("_idx")
        if idx is None:
            idx = {v: i for i, v in enumerate(self.nodes)}
            object.__setattr__(self, "_idx", idx)
        return idx

    def encode_prompt(self, s, t, demo=None) -> list[int]:
        """[DEMO y'... SEP] BOS s t  (demo = a path, its nodes after its source)."""
        ctx = []
        if demo is not None:
            ctx = [self.special("DEMO")] + [self.node_id(v) for v in demo[1:]] + [self.special("SEP")]
        return ctx + [self.special("BOS"), self.node_id(s), self.node_id(t)]

    def encode_completion(self, path) -> list[int]:
        return [self.node_id(v) for v in path[1:]] + [self.special("STOP")]

    def decode(self, ids) -> list:
        return [self.nodes[i] if i < self.n_nodes else SPECIALS[i - self.n_nodes] for i in ids]
