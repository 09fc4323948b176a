import numpy as np

from triton_embeddings.triton_models.regroup import gather_rows, plan_groups


def test_groups_are_sorted_and_cover_every_row():
    lengths = [200, 10, 12, 180, 11, 50, 190, 9]
    groups = plan_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    # 180 + 190 + 200 would pad to 600 tokens, past the default budget of 512
    assert [sorted(lengths[i] for i in g) for g in groups] == [[9, 10, 11, 12], [50], [180, 190], [200]]


def test_padding_within_groups_is_bounded():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 256, size=500).tolist()
    groups = plan_groups(lengths, max_rows=64)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded <= 1.3 * sum(lengths)
    assert max(len(g) for g in groups) <= 64


def test_gather_rows_cuts_and_pads():
    rows = [np.array([1, 2, 3, 0]), np.array([4, 5])]
    assert gather_rows(rows, 3).tolist() == [[1, 2, 3], [4, 5, 0]]


def test_token_budget_caps_long_groups():
    groups = plan_groups([256] * 100, max_rows=64, max_tokens=8192)
    assert [len(g) for g in groups] == [32, 32, 32, 4]
    assert {len(g) for g in plan_groups([256] * 10)} == {2}  # the default: 512 padded tokens a run
    assert [len(g) for g in plan_groups([16] * 40)] == [32, 8]
