"""Recognise a pickle stream by parsing its opcodes, never executing them.

Protocols 2 and later start with a ``PROTO`` header (``\\x80`` and the protocol number), but
protocols 0 and 1 have no header at all: ``cposix\\nsystem\\n...`` is a complete hostile pickle,
and ``pickle.load`` reads it whatever the file is called. So the first bytes (a bounded window)
are parsed with :func:`pickletools.genops` and a small emulation of the pickle stack (marks,
memo), the checks ``pickletools.dis`` makes. Raw weight bytes fail that within a few opcodes; a
file is called pickle only when the stream is consistent and either ends at ``STOP``, runs on
consistently past the window, or imports a global and calls it before going wrong (the shape of a
hostile stub followed by junk, which ``pickle.load`` would still run up to the junk).
"""

from __future__ import annotations

import io
import pickletools
from typing import Final

__all__ = ["SNIFF_WINDOW", "pickle_stream_kind"]

#: Bytes of a file parsed to recognise a pickle stream.
SNIFF_WINDOW: Final = 64 * 1024
# A STOP before the end of the file (another pickle, or raw storages, may follow) or a stream
# longer than the window needs this many consistent opcodes: a handful happen by chance.
_MIN_OPCODES: Final = 16
_IMPORTS: Final = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})
_CALLS: Final = frozenset({"REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"})
_PUTS: Final = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GETS: Final = frozenset({"GET", "BINGET", "LONG_BINGET"})


class _Parse:
    """The consistent opcode prefix of a byte string and how the parse ended."""

    def __init__(self, head: bytes) -> None:
        self.names: list[str] = []
        self.stopped_at: int | None = None  # offset just past STOP
        self.ran_out = False  # the bytes ended mid-stream (not a fault of the stream)
        stream = io.BytesIO(head)
        try:
            self._run(stream)
        except Exception:  # untrusted bytes: any parse failure just ends the prefix
            self.ran_out = stream.tell() >= len(head) and self.stopped_at is None

    def _run(self, stream: io.BytesIO) -> None:
        stack: list[bool] = []  # True marks a MARK
        memo: set[object] = set()
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name == "POP" and stack and stack[-1]:
                stack.pop()
            else:
                pops = len(opcode.stack_before)
                if pickletools.markobject in opcode.stack_before:
                    if True not in stack:
                        return
                    del stack[len(stack) - 1 - stack[::-1].index(True) :]
                    pops = opcode.stack_before.index(pickletools.markobject)
                if len(stack) < pops or any(stack[len(stack) - pops :]):
                    return
                del stack[len(stack) - pops :]
                if name in _PUTS:
                    key = len(memo) if name == "MEMOIZE" else arg
                    if key in memo or not stack or stack[-1]:
                        return
                    memo.add(key)
                elif name in _GETS and arg not in memo:
                    return
                stack.extend(item is pickletools.markobject for item in opcode.stack_after)
            self.names.append(name)
            if name == "STOP":
                self.stopped_at = stream.tell() if not stack else None
                return


def pickle_stream_kind(head: bytes, *, truncated: bool) -> str | None:
    """Why ``head`` (a file's first bytes) is a pickle stream, or None when it does not parse.

    Args:
        head: the first :data:`SNIFF_WINDOW` bytes of the file (or all of it).
        truncated: whether the file goes on past ``head``.
    """
    parse = _Parse(head)
    count = len(parse.names)
    if parse.stopped_at is not None and count >= 2:
        at_end = parse.stopped_at == len(head) and not truncated
        if at_end or count >= _MIN_OPCODES:
            return f"pickle stream of {count} opcodes"
    if parse.ran_out and truncated and count >= _MIN_OPCODES:
        return f"pickle stream ({count} consistent opcodes in the first {len(head)} bytes)"
    names = set(parse.names)
    if names & _IMPORTS and names & _CALLS:
        return "pickle opcodes that import and call a global"
    return None
