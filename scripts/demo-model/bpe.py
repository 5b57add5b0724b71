"""Byte-level BPE tokenizer: GPT-2 style pre-tokenization, merge training, encoding, decoding, and
export to the Hugging Face tokenizers JSON format (written from the published format, no library)."""
import heapq
import re
import unicodedata
from collections import Counter, defaultdict


def _bytes_to_unicode() -> dict:
    """The ByteLevel alphabet: printable Latin-1 bytes map to themselves, the other 68 bytes to
    the code points 256, 257, ... in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}

# Unicode White_Space, the set Rust's and JavaScript's \s use.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _category_class(prefix: str) -> str:
    """Regex character-class body for every code point whose general category starts with prefix."""
    parts = []
    start = None
    for cp in range(0x110001):
        inside = cp < 0x110000 and unicodedata.category(chr(cp)).startswith(prefix)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            end = cp - 1
            parts.append(re.escape(chr(start)) if start == end else f"{re.escape(chr(start))}-{re.escape(chr(end))}")
            start = None
    return "".join(parts)


def _pretokenize_regex() -> re.Pattern:
    """The GPT-2 split pattern that the ByteLevel pre-tokenizer applies, with \\p{L} and \\p{N}
    spelled out because Python's re has no Unicode property classes."""
    letters, numbers, ws = _category_class("L"), _category_class("N"), _WHITESPACE
    return re.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+| ?[^{ws}{letters}{numbers}]+"
        rf"|[{ws}]+(?![^{ws}])|[{ws}]+"
    )


PRETOKENIZE = _pretokenize_regex()


def pretokenize(text: str) -> list:
    """Splits text into pre-tokens, each already mapped to the byte-level alphabet."""
    return ["".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8")) for piece in PRETOKENIZE.findall(text)]


def train(word_counts: Counter, num_merges: int) -> list:
    """Learns merges greedily: always the most frequent adjacent pair (ties: smallest pair).
    Pair counts are updated incrementally, touching only words that contain the merged pair."""
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts = Counter()
    where = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # stale entry; the current count was pushed when it changed
        if -neg < 2:
            break
        merges.append(pair)
        joined = pair[0] + pair[1]
        changed = set()
        for i in where.pop(pair):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                changed.add(p)
            w = _merge_word(w, pair, joined)
            for p in zip(w, w[1:]):
                pair_counts[p] += f
                where[p].add(i)
                changed.add(p)
            words[i] = w
        del pair_counts[pair]
        changed.discard(pair)
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return merges


def _merge_word(symbols: list, pair: tuple, joined: str) -> list:
    out = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(joined)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


class Tokenizer:
    """Encodes and decodes with a fixed vocabulary: special tokens first, then the 256 byte symbols,
    then one token per merge, in merge order."""

    def __init__(self, specials: list, merges: list):
        self.specials = list(specials)
        self.merges = list(merges)
        symbols = self.specials + [BYTE_TO_CHAR[b] for b in range(256)] + [a + b for a, b in self.merges]
        self.vocab = {s: i for i, s in enumerate(symbols)}
        self.id_to_symbol = symbols
        self.ranks = {pair: r for r, pair in enumerate(self.merges)}
        self.special_ids = {s: self.vocab[s] for s in self.specials}
        self.special_split = re.compile("(" + "|".join(re.escape(s) for s in self.specials) + ")")
        self._cache = {}

    def __len__(self) -> int:
        return len(self.id_to_symbol)

    def _encode_word(self, word: str) -> list:
        ids = self._cache.get(word)
        if ids is None:
            symbols = list(word)
            while len(symbols) > 1:
                pairs = list(zip(symbols, symbols[1:]))
                best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
                if best not in self.ranks:
                    break
                symbols = _merge_word(symbols, best, best[0] + best[1])
            ids = [self.vocab[s] for s in symbols]
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list:
        """Ordinary text only: special-token strings are not recognised (see encode_with_specials)."""
        return [i for word in pretokenize(text) for i in self._encode_word(word)]

    def encode_with_specials(self, text: str) -> list:
        """Like the HF tokenizer without post-processing: special-token strings become their ids."""
        ids = []
        for part in self.special_split.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.encode(part))
        return ids

    def decode(self, ids: list, skip_special: bool = False) -> str:
        out = bytearray()
        for i in ids:
            symbol = self.id_to_symbol[i]
            if symbol in self.special_ids:
                if not skip_special:
                    out.extend(symbol.encode("utf-8"))
            else:
                out.extend(CHAR_TO_BYTE[c] for c in symbol)
        return out.decode("utf-8", errors="replace")

    def to_hf_json(self, bos: str) -> dict:
        """tokenizer.json for the HF tokenizers libraries; the post-processor prepends `bos`."""
        added = [
            {"id": self.special_ids[s], "content": s, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for s in self.specials
        ]
        bos_id = self.special_ids[bos]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            },
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": self.vocab,
                "merges": [f"{a} {b}" for a, b in self.merges],
            },
        }

    @classmethod
    def from_hf_json(cls, data: dict) -> "Tokenizer":
        specials = [t["content"] for t in sorted(data["added_tokens"], key=lambda t: t["id"])]
        merges = [tuple(m.split(" ")) for m in data["model"]["merges"]]
        tok = cls(specials, merges)
        if tok.vocab != data["model"]["vocab"]:
            raise ValueError("tokenizer.json vocabulary is not in the layout this script writes")
        return tok
