"""Is a file's segment one the agent could ever match? Catches a typo in a name at once.

A segment is plausible when it is a producerSegmentID (digits), an id configured under
``segments:``, or a producerSegmentIDString some listed job has carried. Anything else still
waits (a job for it may come), but it is named as a likely mistake, with the closest known name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

__all__ = ["SegmentCatalogue"]


class SegmentCatalogue:
    """The names the agent knows; grows with every list of waiting jobs (one entry a segment)."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = tuple(names)
        self._known = set(names.values())
        self._doubts: dict[str, str | None] = {}  # cache: cleared when a new name is learnt

    def learn(self, segments: Iterable[str]) -> None:
        new = set(segments) - self._known
        if new:
            self._known.update(new)
            self._doubts.clear()

    def doubt(self, segment: str) -> str | None:
        """None when ``segment`` may be right; else why it looks mistaken, with a suggestion."""
        if segment in self._doubts:
            return self._doubts[segment]
        doubt = None
        if not (segment.isascii() and segment.isdecimal()) and segment not in self._known:
            words = sorted({*self._names, *(s for s in self._known if not s.isdecimal())})
            close = difflib.get_close_matches(segment, words, n=1)
            if close:
                hint = f"did you mean {close[0]!r}?"
            elif self._names:
                hint = f"names under segments: are {', '.join(self._names)}"
            else:
                hint = "check the file name, or add the name under segments:"
            doubt = (f"segment {segment!r} is not a number, not a name under segments: and "
                     f"no job listed so far has that producerSegmentIDString; {hint}")
        self._doubts[segment] = doubt
        return doubt
