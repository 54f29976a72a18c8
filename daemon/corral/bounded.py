"""One bounded cache for corrald's memos (parsed policy files and profiles,
clients' rule texts, rule sets' trie entries, Landlock plans, seccomp programs):
a dict of at most `size` entries, the oldest dropped to make room. What each
memo keys on, and when its entry is still good, stays with its user."""
from __future__ import annotations


class Bounded(dict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key, value):
        self.pop(key, None)
        if len(self) >= self.size:
            self.pop(next(iter(self)))
        self[key] = value
        return value
