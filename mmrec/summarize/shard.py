"""`--shard i/n`: which part of the work one process does. Shards are disjoint and together cover everything."""
from __future__ import annotations

import os
from dataclasses import dataclass

from mmrec.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @property
    def writer(self) -> str:
        """The cache file name of this shard's writer."""
        return "main" if self.count == 1 else f"shard-{self.index}-of-{self.count}"

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard:
    """'i/n' -> Shard(i, n); 'auto' takes RANK and WORLD_SIZE from the environment (torchrun, accelerate)."""
    if text is None:
        return Shard()
    if text == "auto":
        return Shard(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4) or 'auto', got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return Shard(i, n)


def finish_message(shard: Shard, stats_line: str, table: object, complete: bool) -> str:
    """What a summarize command prints when its shard is done: the table it wrote, or what is still missing."""
    if complete:
        return f"wrote {table} ({stats_line})"
    return (f"shard {shard} done ({stats_line}); other shards are still missing: the last one to finish "
            "writes the table, or run with --merge once all are done")
