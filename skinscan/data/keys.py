"""The 64-bit resume key of an input URI, and set lookups on sorted keys: numpy and hashlib only, so that the tasks
that scan an output's parts (`screening.partindex`) start without importing pandas or the listing."""

from __future__ import annotations

import hashlib

import numpy as np


def uri_keys(uris) -> np.ndarray:
    """64-bit keys of input URIs (blake2b): what the resume index stores and the read tasks look up."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") for u in uris),
        dtype=np.uint64,
        count=len(uris),
    )


def sorted_unique(keys) -> np.ndarray:
    """`keys` as sorted unique uint64, sorting only when they are not already (the listing's keys come so)."""
    keys = np.asarray(keys, np.uint64)
    if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
        keys = np.unique(keys)
    return keys


def in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Per key, whether it is in `sorted_keys` (sorted, unique): a binary search each, O(n log M). `np.isin`
    sorts all M keys on every call, which a resume over millions of written rows pays once per listing block."""
    keys = np.asarray(keys, sorted_keys.dtype)
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys
