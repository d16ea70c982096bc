"""RoPE rows kept per position (webgemma.rope.RopeRows): equal to tables computed afresh, whatever the order asked."""

import numpy as np

from webgemma.rope import RopeRows, rope_tables


def test_kept_rows_equal_fresh_tables_in_any_order():
    inv_freq = (1.0 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float32)
    inv_freq[-4:] = 0  # proportional RoPE's unrotated dims
    kept = RopeRows(inv_freq)
    # within the first block of kept rows, then across blocks (ROPE_BLOCK) and from a block's first row on
    for start, count in [(0, 5), (3, 1), (5, 1), (6, 1), (100, 37), (2, 90), (136, 1), (0, 300), (299, 1),
                         (1000, 100), (0, 2500), (2047, 2), (2048, 1), (4095, 1), (4096, 1), (3000, 1200)]:
        cos, sin = kept.rows(start, count)
        want_cos, want_sin = rope_tables(inv_freq, np.arange(start, start + count))
        np.testing.assert_array_equal(cos, want_cos)
        np.testing.assert_array_equal(sin, want_sin)
        assert cos.dtype == np.float32 and cos.flags.c_contiguous
    assert kept.count == 4200


def test_rows_handed_out_do_not_change_as_the_table_grows():
    kept = RopeRows(np.asarray([1.0, 0.5], np.float32))
    cos, _ = kept.rows(0, 3)
    before = cos.copy()
    kept.rows(3, 1000)
    np.testing.assert_array_equal(cos, before)
