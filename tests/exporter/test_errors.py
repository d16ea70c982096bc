"""Every way an export can fail names the problem, and leaves no output folder (nor a partial one) behind."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.support.checkpoints import make_checkpoint
from webgemma_export import shards
from webgemma_export.errors import ExportError
from webgemma_export.export import export


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("pristine") / "checkpoint", kind="e2b")


@pytest.fixture
def checkpoint(pristine, tmp_path):
    copy = tmp_path / "checkpoint"
    shutil.copytree(pristine, copy)
    return copy


def assert_fails(checkpoint, out, match: str, **options):
    with pytest.raises(ExportError, match=match):
        export(checkpoint, out, log=lambda _: None, **options)
    assert not out.exists(), "a failed export left its output folder"
    assert not list(out.parent.glob(f".{out.name}.partial-*")), "a failed export left its temporary folder"


def edit_tensors(checkpoint, change):
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(checkpoint, **changes):
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_folder(tmp_path):
    assert_fails(tmp_path / "nope", tmp_path / "out", "is not a folder")


def test_missing_config(checkpoint, tmp_path):
    (checkpoint / "config.json").unlink()
    assert_fails(checkpoint, tmp_path / "out", r"config\.json not found")


def test_missing_weights(checkpoint, tmp_path):
    (checkpoint / "model.safetensors").unlink()
    assert_fails(checkpoint, tmp_path / "out", r"no \*\.safetensors")


def test_missing_shard_listed_in_index(checkpoint, tmp_path):
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_fails(checkpoint, tmp_path / "out", r"model-00002-of-00002\.safetensors.*incomplete")


def test_missing_tokenizer(checkpoint, tmp_path):
    (checkpoint / "tokenizer.json").unlink()
    assert_fails(checkpoint, tmp_path / "out", r"tokenizer\.json not found")


def test_unknown_architecture(checkpoint, tmp_path):
    edit_config(checkpoint, model_type="llama", architectures=["LlamaForCausalLM"])
    assert_fails(checkpoint, tmp_path / "out", r"unknown architecture model_type='llama'")


def test_unsupported_architecture_feature(checkpoint, tmp_path):
    edit_config(checkpoint, enable_moe_block=True)
    assert_fails(checkpoint, tmp_path / "out", "mixture-of-experts")


def test_missing_tensor_is_named_with_its_shape(checkpoint, tmp_path):
    edit_tensors(checkpoint, lambda t: t.pop("model.layers.3.mlp.up_proj.weight"))
    assert_fails(checkpoint, tmp_path / "out", r"no tensor model\.layers\.3\.mlp\.up_proj\.weight \(expected shape \[128, 64\]\)")


def test_misshaped_tensor_is_named_with_both_shapes(checkpoint, tmp_path):
    def shrink(t):
        t["model.layers.7.mlp.down_proj.weight"] = t["model.layers.7.mlp.down_proj.weight"][:, :100].contiguous()

    edit_tensors(checkpoint, shrink)
    assert_fails(checkpoint, tmp_path / "out", r"model\.layers\.7\.mlp\.down_proj\.weight has shape \[64, 100\], expected \[64, 256\]")


def test_unknown_tensor_is_refused(checkpoint, tmp_path):
    def add(t):
        t["model.layers.0.self_attn.mystery.weight"] = t["model.norm.weight"].clone()

    edit_tensors(checkpoint, add)
    assert_fails(checkpoint, tmp_path / "out", r"mystery\.weight.*refusing")


def test_truncated_weights_file(checkpoint, tmp_path):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    assert_fails(checkpoint, tmp_path / "out", "truncated")


@pytest.mark.parametrize("options, match", [
    ({"quant": "int3"}, r"--quant 'int3' is not supported"),
    ({"block_size": 48}, r"--block-size 48"),
    ({"block_size": 128, "quant": "int4"}, r"not a multiple of --block-size 128"),
    ({"shard_mb": 0}, r"--shard-mb 0"),
])
def test_unsupported_options(checkpoint, tmp_path, options, match):
    assert_fails(checkpoint, tmp_path / "out", match, **options)


def test_existing_output_is_not_touched(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export(checkpoint, out, log=lambda _: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_not_enough_disk_space(checkpoint, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    assert_fails(checkpoint, tmp_path / "out", "not enough disk space")


def test_disk_full_while_writing(checkpoint, tmp_path, monkeypatch):
    """The disk fills up after some shards were written (ENOSPC from the real write path)."""
    real_write, calls = shards.ShardWriter._write, []

    def write(self, data):
        calls.append(len(data))
        if len(calls) > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(shards.ShardWriter, "_write", write)
    assert_fails(checkpoint, tmp_path / "out", "disk full")


def test_interrupted_export_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    real_write, calls = shards.ShardWriter._write, []

    def write(self, data):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        real_write(self, data)

    monkeypatch.setattr(shards.ShardWriter, "_write", write)
    with pytest.raises(KeyboardInterrupt):
        export(checkpoint, tmp_path / "out", log=lambda _: None)
    assert list(tmp_path.iterdir()) == [checkpoint]
