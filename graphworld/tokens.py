"""Tokenization: one token per node plus BOS, SEP, DEMO, STOP (and FB with feedback).

Prompt "BOS s t", completion "y STOP" with y the path's nodes after s; a teacher context
prefixes "DEMO y' SEP" (theory.md §8) or the feedback "FB w SEP" (WrongEndpoint(w), theory.md §11).
The FB token exists only in a vocabulary built with `Vocab.of(graph, feedback=True)`, so a run
without feedback keeps the vocabulary (and the model's initialization) it always had.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import GraphworldError

SPECIALS = ("BOS", "SEP", "DEMO", "STOP")
#: the specials of a vocabulary with feedback contexts: FB appended (node and other special ids unchanged)
FEEDBACK_SPECIALS = SPECIALS + ("FB",)


@dataclass(frozen=True)
class Vocab:
    nodes: tuple
    specials: tuple = SPECIALS

    @classmethod
    def of(cls, graph, feedback: bool = False) -> "Vocab":
        return cls(tuple(sorted(graph.nodes, key=str)), FEEDBACK_SPECIALS if feedback else SPECIALS)

    def __len__(self):
        return len(self.nodes) + len(self.specials)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    def special(self, name: str) -> int:
        if name not in self.specials:
            raise GraphworldError(f"this vocabulary has no {name} token (specials: {', '.join(self.specials)}); "
                                  "a feedback context needs a world built with FB")
        return self.n_nodes + self.specials.index(name)

    def node_id(self, v) -> int:
        try:
            return self._index[v]
        except (KeyError, TypeError):
            raise GraphworldError(f"{v!r} is not a node of this graph's vocabulary") from None

    @property
    def _index(self):
        idx = self.__dict__.get("_idx")
        if idx is None:
            idx = {v: i for i, v in enumerate(self.nodes)}
            object.__setattr__(self, "_idx", idx)
        return idx

    def encode_prompt(self, s, t, demo=None, feedback=None) -> list[int]:
        """[DEMO y'... SEP | FB w SEP] BOS s t  (demo = a path, its nodes after its source; feedback = the
        node w of WrongEndpoint(w), whose `words()` are ("WRONG_ENDPOINT", w): only w is encoded after FB)."""
        ctx = []
        if demo is not None and feedback is not None:
            raise GraphworldError("a context holds a demonstration or a feedback, not both")
        if demo is not None:
            ctx = [self.special("DEMO")] + [self.node_id(v) for v in demo[1:]] + [self.special("SEP")]
        elif feedback is not None:
            ctx = [self.special("FB"), self.node_id(feedback), self.special("SEP")]
        return ctx + [self.special("BOS"), self.node_id(s), self.node_id(t)]

    def encode_completion(self, path) -> list[int]:
        return [self.node_id(v) for v in path[1:]] + [self.special("STOP")]

    def decode(self, ids) -> list:
        return [self.nodes[i] if i < self.n_nodes else self.specials[i - self.n_nodes] for i in ids]
