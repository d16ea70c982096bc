"""`webgemma export`: checkpoint folder → model folder, written whole or not at all.

Everything is written into a hidden temporary folder beside the target and renamed into place at the end, so a
failed or interrupted export never leaves a folder that looks complete (the manifest is the last file written).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from webgemma import __version__
from webgemma.manifest import FORMAT, FORMAT_VERSION

from .chat_files import read_chat_files
from .checkpoint import Checkpoint
from .config import TextArch, read_arch
from .errors import CheckpointError, ExportError, OptionError
from .graph.decoder import build_decoder
from .graph.fill import fill_graph
from .graph.linear import FloatLinear, NBitsLinear
from .per_layer_table import claim_per_layer_table, write_per_layer_table
from .quantize import bits_of, require_format
from .shards import ShardWriter, share_weights, write_weights
from .tokenizer_artifact import convert_tokenizer_json
from .weights import Weights

MAX_GPU_BUFFER = 128 * 2**20  # WebGPU's default maxStorageBufferBindingSize


def export(checkpoint_dir, out_dir, *, quant: str = "int4", block_size: int = 32, shard_mb: float = 64,
           log: Callable[[str], None] = print) -> Path:
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    require_format(quant)
    if block_size < 16 or block_size & (block_size - 1):
        raise OptionError(f"--block-size {block_size}: use a power of two ≥ 16 (32 is the default)")
    if not 0 < shard_mb <= 2000:
        raise OptionError(f"--shard-mb {shard_mb}: use a size in (0, 2000] MiB (a browser tab holds at most ~2 GiB per buffer)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OptionError(f"{out_dir} already exists and is not empty: choose a new folder or remove it")
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"{checkpoint_dir} is not a folder: give the Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)")

    arch = read_arch(checkpoint_dir)
    tokenizer_path = checkpoint_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise CheckpointError(f"{tokenizer_path} not found: the checkpoint folder must include the tokenizer (tokenizer.json)")
    weights = Weights(Checkpoint(checkpoint_dir), arch)
    bits = bits_of(quant)
    float_dtype = np.float16 if quant == "fp16" else np.float32
    shard_bytes = int(shard_mb * 2**20)
    max_bytes = min(shard_bytes, MAX_GPU_BUFFER)
    linear = NBitsLinear(weights, bits, block_size, max_bytes) if bits else FloatLinear(weights, float_dtype, max_bytes)

    # Building the graph claims every tensor it uses: a missing or mis-shaped tensor fails here, before any write.
    graph, io = build_decoder(arch, weights, linear, bits=bits, float_dtype=float_dtype, block_size=block_size, max_bytes=max_bytes)
    # The one-token step graph for graph capture: the same weights by the same names, stored once.
    step, step_io = build_decoder(arch, weights, linear, bits=bits, float_dtype=float_dtype, block_size=block_size,
                                  max_bytes=max_bytes, static_cache=True)
    table_name = claim_per_layer_table(weights, arch, bits, block_size)
    skipped = weights.skipped()
    tokenizer_json = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    chat = read_chat_files(checkpoint_dir, tokenizer_json, json.loads((checkpoint_dir / "config.json").read_text()))
    tokenizer_bytes = convert_tokenizer_json(tokenizer_path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _check_space(tmp, arch, graph.weights, bits)
        log(f"exporting {arch.architecture} ({arch.num_layers} layers, hidden {arch.hidden_size}) as {quant} into {out_dir}")
        model = graph.model()
        writer = ShardWriter(tmp, "decoder", max_bytes)
        write_weights(model, graph.weights, writer, progress=_every_tenth(log, "decoder weights"))
        graph_bytes = model.SerializeToString()
        (tmp / "decoder.onnx").write_bytes(graph_bytes)
        step_bytes = share_weights(step.model(), model).SerializeToString()
        (tmp / "decoder_step.onnx").write_bytes(step_bytes)
        presents = [c[f"present_{part}"] for c in io.cache for part in ("key", "value")]
        fill_bytes = fill_graph(model, presents).SerializeToString()
        (tmp / "decoder_fill.onnx").write_bytes(fill_bytes)
        log("writing the per-layer embedding table")
        table = write_per_layer_table(weights, table_name, arch, ShardWriter(tmp, "per_layer", shard_bytes, align=1),
                                      bits=bits, float_dtype=float_dtype, block_size=block_size)
        (tmp / "tokenizer.bin").write_bytes(tokenizer_bytes)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": f"webgemma {__version__}",
            "source": {"architecture": arch.architecture, "checkpoint": checkpoint_dir.name, "skipped_tensors": skipped},
            "architecture": _architecture(arch),
            "quantization": {"weights": quant, "block_size": block_size if bits else None,
                             "scheme": "symmetric blocks, implicit zero point" if bits else None, "activations": "float32"},
            "decoder": {
                "graph": _file_entry("decoder.onnx", graph_bytes),
                "external_data": writer.files,
                "inputs": {"input_ids": "input_ids", "per_layer_rows": "per_layer_rows",
                           "per_layer_scales": "per_layer_scales" if bits else None},
                "rope": io.rope,
                "positions": io.positions,
                "cache": io.cache,
                "logits": "logits",
                "top_k": io.top_k,
                # same inputs, cache names and top-k outputs; caches are fixed buffers (see graph/decoder.py)
                "step_graph": _file_entry("decoder_step.onnx", step_bytes) | {"masks": step_io.masks},
                # the prefill graph cut to its caches, for a runtime whose decode step scores a prompt's last token
                "fill_graph": _file_entry("decoder_fill.onnx", fill_bytes),
            },
            "per_layer_table": table,
            "tokenizer": _file_entry("tokenizer.bin", tokenizer_bytes),
            **chat,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise ExportError(f"disk full while writing {out_dir}: free space on {out_dir.parent} and export again (nothing was left behind)") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done: {out_dir}")
    return out_dir


def _architecture(arch: TextArch) -> dict:
    return {
        "model_type": "gemma4_text",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "rms_norm_eps": arch.rms_norm_eps,
        "layer_types": list(arch.layer_types),
        "head_dim": arch.head_dim,
        "num_key_value_heads": arch.num_kv_heads,
        "sliding_window": arch.sliding_window,
        "num_kv_shared_layers": arch.num_kv_shared_layers,
        "kv_source": list(arch.kv_source),
        "hidden_size_per_layer_input": arch.per_layer_dim,
        "max_position_embeddings": arch.max_position_embeddings,
        "final_logit_softcapping": arch.final_logit_softcapping,
        "rope_inv_freq": {t: [float(x) for x in arch.rope_inv_freq(t)] for t in sorted(set(arch.layer_types))},
    }


def _file_entry(path: str, data: bytes) -> dict:
    return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _check_space(folder: Path, arch: TextArch, weights, bits) -> None:
    table = arch.vocab_size_per_layer * arch.num_layers * arch.per_layer_dim * ((bits or 32) / 8 + (2 / 32 if bits else 0))
    need = sum(w.nbytes for w in weights) + table
    free = shutil.disk_usage(folder).free
    if free < need * 1.02:
        raise ExportError(f"not enough disk space on {folder.parent}: the export needs about {need / 2**30:.2f} GiB, "
                          f"{free / 2**30:.2f} GiB is free")


def _every_tenth(log, what: str):
    def progress(done: int, total: int, name: str) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log(f"  {what}: {done}/{total}")
    return progress
