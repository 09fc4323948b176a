"""Regroup the rows of a ragged batch by length, so one batch of mixed lengths costs little padding.

Plain module (numpy only), used by the embedded encoder and unit-tested without Triton.
"""

from __future__ import annotations

import numpy as np


def plan_groups(lengths: list[int], max_ratio: float = 1.25, slack: int = 8, max_rows: int = 64) -> list[list[int]]:
    """Split row indices into groups of similar length, shortest first.

    Rows are sorted by length; a group closes when the next row is longer than `max_ratio` times the
    group's first row plus `slack` tokens (short rows tolerate a few pad tokens), or at `max_rows`.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < max_rows and lengths[i] <= lengths[groups[-1][0]] * max_ratio + slack:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def gather_rows(rows: list[np.ndarray], length: int) -> np.ndarray:
    """Stack 1-D rows into [len(rows), length], cutting or zero-padding each one."""
    out = np.zeros((len(rows), length), dtype=rows[0].dtype)
    for k, row in enumerate(rows):
        n = min(length, row.shape[0])
        out[k, :n] = row[:n]
    return out
