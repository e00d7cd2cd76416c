"""Error messages with the texts of the rows they came from masked out.

A failure reason goes into logs and the quarantine, which carry ids, never query or
document texts. An exception may quote a text raw, through repr() or json (escaped
quotes, newlines, non-ASCII), or cut off. So any run of at least MIN_RUN characters
that also occurs in one of those forms of a text is masked, as are whole-word
occurrences of texts shorter than that.
"""

from __future__ import annotations

import json
import re

import numpy as np

MIN_RUN = 6
SCAN_CHARS = 4000  # of a message, at most; the rest is dropped unread
_WEIGHTS = (np.uint64(0x9E3779B97F4A7C15) ** np.arange(MIN_RUN, dtype=np.uint64)).astype(np.uint64)


def _forms(text: str) -> set[str]:
    """How an exception message may spell `text`."""
    forms = {text, repr(text)[1:-1], ascii(text)[1:-1], json.dumps(text)[1:-1],
             json.dumps(text, ensure_ascii=False)[1:-1], text.encode("unicode_escape").decode("ascii")}
    return {f for f in forms if f}


def _run_hashes(text: str) -> np.ndarray:
    """A 64-bit hash of every run of MIN_RUN characters of `text`, in order."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if len(codes) < MIN_RUN:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return np.lib.stride_tricks.sliding_window_view(codes, MIN_RUN) @ _WEIGHTS


def without_texts(message: str, texts: dict[str, str]) -> str:
    """`message` with every part that quotes one of `texts` (label -> text) replaced by <label>."""
    message = message[:SCAN_CHARS]
    owner = np.zeros(len(message), dtype=np.int16)  # 0: keep; i: masked, from the i-th text
    runs = _run_hashes(message)
    for label_index, text in enumerate(texts.values(), start=1):
        for form in _forms(text):
            if len(form) < MIN_RUN:
                for m in re.finditer(r"(?<!\w)" + re.escape(form) + r"(?!\w)", message):
                    owner[m.start():m.end()] = np.where(owner[m.start():m.end()] == 0, label_index,
                                                        owner[m.start():m.end()])
                continue
            for start in np.flatnonzero(np.isin(runs, _run_hashes(form))):
                span = owner[start:start + MIN_RUN]
                span[span == 0] = label_index
    labels = [f"<{label}>" for label in texts]
    out, i = [], 0
    while i < len(message):
        if owner[i] == 0:
            out.append(message[i])
            i += 1
            continue
        j = i
        while j < len(message) and owner[j] != 0:
            j += 1
        out.append(labels[owner[i] - 1])
        i = j
    return "".join(out)
