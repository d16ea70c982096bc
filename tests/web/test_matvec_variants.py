"""Every variant of the decode step's matvec kernel (wgsl.mjs MATVEC: lanes per row, sums through workgroup memory or
by subgroups, float32 or int8 inputs; the three stacked sources, the gate·up product) computes W x for int4 weights:
bench/matvec_bench.py on SwiftShader, whose subgroups of 4 take the path for rows wider than a subgroup, checked
against numpy (on the int8 inputs' values for Q8)."""

from argparse import Namespace

import pytest

from bench.matvec_bench import run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_every_matvec_variant_computes_the_product(chromium):
    def open_page(url: str, timeout: float) -> dict:
        page = chromium.new_page()
        try:
            page.goto(url)
            page.wait_for_function("window.result", timeout=timeout * 1000)
            return page.evaluate("window.result")
        finally:
            page.close()

    result = run(Namespace(gpu=False, quick=True, timeout=300), open_page)
    assert "subgroups" in result["adapter"]["features"]  # else only half the variants ran
    variants = [v for shape in result["shapes"] for v in shape["variants"]]
    assert {v["SG"] for v in variants} == {v["Q8"] for v in variants} == {0, 1}
    assert len({v["LANES"] for v in variants}) >= 3
    assert not result["errors"] and not [v for v in variants if "error" in v], result
