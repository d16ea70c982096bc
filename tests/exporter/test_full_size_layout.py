"""The benchmark's full-size checkpoints are laid out exactly as transformers lays out Gemma 4 E2B / E4B."""

from __future__ import annotations

import pytest
import torch

from bench.full_size import config_json, text_decoder_shapes


@pytest.mark.parametrize("kind", ["e2b", "e4b"])
def test_names_and_shapes_equal_transformers(kind):
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    config = {k: v for k, v in config_json(kind).items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Gemma4ForCausalLM(Gemma4TextConfig(**config))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert text_decoder_shapes(kind) == expected
