"""Byte-level BPE, the short way: a reference to read, to teach from, and to test against.

Slow on purpose (every merge recounts every pair), but every rule is visible:

1. Text is cut into chunks by a regex (GPT-4's split pattern by default); pairs never
   cross a chunk boundary. Equal chunks are counted once and weighted by frequency.
2. A chunk starts as its UTF-8 bytes: ids 0..255.
3. Count adjacent pairs inside each chunk, overlapping ones included ('aaa' holds
   (a, a) twice), each weighted by the chunk's frequency.
4. Merge the pair with the highest count; ties go to the smallest (left id, right id).
   Merge i creates id 256 + i and replaces the pair left to right ('aaa' -> [X, a]).
5. Repeat until vocab_size = 256 + number of merges.

Encoding applies the merges in the order they were learned: in each chunk, repeatedly
merge the adjacent pair with the lowest merge index.

Text that Python can hold but UTF-8 cannot (lone surrogates such as '\\ud800') is cleaned
the way tiktoken cleans it (`clean_text`), so the reference and the real encoder agree.
`nbcore.tokenizer` is the fast implementation; its tests check it gives the same merges.
"""
from collections import Counter

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")


def clean_text(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD, exactly as tiktoken does before encoding.

    Python strings may hold surrogate code points ('\\ud83d'), UTF-8 cannot. tiktoken
    round-trips such text through UTF-16 with 'surrogatepass' and decodes with 'replace':
    a valid high+low surrogate pair becomes the character it encodes, a lone one
    becomes '\\ufffd'. The trainer and the reference encoder do the same.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def split_chunks(text: str, pattern: str = GPT4_PATTERN) -> list[str]:
    """The regex chunks of `text`; BPE never merges across their boundaries."""
    return regex.findall(pattern, clean_text(text))


def get_stats(chunks, counts=None) -> Counter:
    """{(left, right): count} over adjacent pairs in every chunk (a list of ids), overlaps included.

    `counts[i]` weights chunk i (default 1).
    """
    stats = Counter()
    for i, ids in enumerate(chunks):
        w = 1 if counts is None else counts[i]
        for pair in zip(ids, ids[1:]):
            stats[pair] += w
    return stats


def best_pair(stats) -> tuple[int, int]:
    """The pair to merge next: highest count, ties broken by the smallest (left, right)."""
    return max(stats, key=lambda pair: (stats[pair], -pair[0], -pair[1]))


def merge(ids, pair, new_id) -> list[int]:
    """`ids` with every occurrence of `pair` replaced by `new_id`, scanning left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_chunks(texts, pattern: str = GPT4_PATTERN) -> Counter:
    """{chunk string: how many times it occurs} over all texts."""
    counts = Counter()
    for text in texts:
        counts.update(split_chunks(text, pattern))
    return counts


def train_reference(texts, vocab_size: int, pattern: str = GPT4_PATTERN) -> list[tuple[int, int]]:
    """The merges (left id, right id) of byte-level BPE on `texts`, in the order learned."""
    if vocab_size <= 256:
        raise ValueError(f"vocab_size={vocab_size}: must be more than 256 (the 256 byte tokens)")
    chunk_counts = count_chunks([texts] if isinstance(texts, str) else texts, pattern)
    chunks = [list(c.encode("utf-8")) for c in chunk_counts]
    weights = list(chunk_counts.values())
    merges = []
    for i in range(vocab_size - 256):
        stats = get_stats(chunks, weights)
        if not stats:
            raise ValueError(f"corpus too small: it ran out of pairs after {len(merges)} merges "
                             f"(vocab {256 + len(merges)}); use more text or a smaller vocab_size")
        pair = best_pair(stats)
        chunks = [merge(ids, pair, 256 + i) for ids in chunks]
        merges.append(pair)
    return merges


def encode_chunk_reference(data: bytes, merges) -> list[int]:
    """The ids of one chunk's bytes: merge the lowest-ranked adjacent pair until none is left."""
    ranks = {pair: i for i, pair in enumerate(merges)} if not isinstance(merges, dict) else merges
    ids = list(data)
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        ids = merge(ids, pair, 256 + ranks[pair])
    return ids


def encode_reference(text: str, merges, pattern: str = GPT4_PATTERN) -> list[int]:
    """Ordinary text (no special tokens) to ids, with the merges applied in learned order."""
    ranks = {tuple(pair): i for i, pair in enumerate(merges)}
    out = []
    for chunk in split_chunks(text, pattern):
        out.extend(encode_chunk_reference(chunk.encode("utf-8"), ranks))
    return out


def vocab_bytes(merges) -> list[bytes]:
    """bytes of every token id: 0..255 are the bytes, 256 + i is the merged pair's bytes."""
    vocab = [bytes([i]) for i in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab


def decode_reference(ids, merges) -> str:
    vocab = vocab_bytes(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
