"""Spies shared by tests in several folders."""

from __future__ import annotations

from tailprompt.backbone import FrozenVLM


def shared_prefix_calls(monkeypatch) -> list[int]:
    """Record the prefix length of each shared-prefix text pass from now on (to tell it from the fallback)."""
    calls: list[int] = []
    original = FrozenVLM._encode_with_shared_prefix

    def wrapped(self, x, eot, deep, prefix, truncate):
        calls.append(prefix)
        return original(self, x, eot, deep, prefix, truncate)

    monkeypatch.setattr(FrozenVLM, "_encode_with_shared_prefix", wrapped)
    return calls
