"""A simulated kill for resume tests: a function that raises KeyboardInterrupt on a given call."""
from __future__ import annotations

from typing import Any, Callable


def crash_on_call(real: Callable[..., Any], call: int, after: bool = False) -> Callable[..., Any]:
    """`real`, except that its call number `call` (from 1) raises KeyboardInterrupt, as a killed process would:
    before that call runs, or right after it with `after` (e.g. just after a checkpoint was written)."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call and not after:
            raise KeyboardInterrupt
        result = real(*args, **kwargs)
        if calls == call:
            raise KeyboardInterrupt
        return result

    return wrapper
