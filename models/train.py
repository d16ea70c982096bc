"""Train webgemma's built-in model: a tiny Gemma 4 text decoder with E2B's layer features, on Jane Austen.

    apt-get install -y --no-install-recommends r-cran-janeaustenr     # the corpus (see corpus.py)
    .venv/bin/python models/train.py                                   # ~25-45 min on 2 CPU cores → models/tiny/

Everything is seeded: the same package, versions and thread count give the same checkpoint. Steps:
  1. corpus: the six novels → paragraphs; held-out = the contiguous last ~5% (the end of Persuasion), never trained on
  2. tokenizer: `gemma_tokenizer.train_gemma_style_tokenizer` on the training paragraphs only
  3. model: `Gemma4ForCausalLM` (model_type gemma4_text) with the E2B features, see `model_config`
  4. training: windows of SEQ tokens, each `<bos>` + text from a paragraph start; AdamW, warm-up, cosine decay
  5. save: bf16 `save_pretrained` folder with tokenizer.json, tokenizer_config.json (chat template), generation_config
  6. quality: reload the folder, held-out perplexity vs an add-one unigram, greedy continuations → models/REPORT.json;
     write models/heldout.txt (an excerpt of the held-out text) and models/unigram_counts.json for the tests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

# Threads that sleep at barriers instead of spinning: on a shared 2-core machine, spinning OpenMP threads made a
# training step 10x slower whenever another process ran (measured 3.4-8 s vs 34-54 s per step). No effect on results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from gemma_tokenizer import tokenizer_config, train_gemma_style_tokenizer  # noqa: E402

SEQ = 256  # training window; longer than the sliding window so that the window matters
PROMPTS = [
    "It is a truth universally acknowledged",
    "My dear Mr. Bennet,",
    "She was",
    "The weather was",
    "Elizabeth could not",
]


def model_config(vocab_size: int, special: dict[str, int]):
    """Gemma 4 E2B's features at toy size (E2B values in comments)."""
    from transformers import Gemma4TextConfig

    layers = 10  # E2B 35
    return Gemma4TextConfig(
        vocab_size=vocab_size,
        vocab_size_per_layer_input=vocab_size,
        hidden_size=160,  # 1536; a multiple of the 32-value quantization block; sqrt(160), like sqrt(1536), is no bf16 number
        intermediate_size=256,  # 6144; double wide (512) on the KV-shared layers
        num_hidden_layers=layers,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * (layers // 5),  # (S,S,S,S,G)×7, last global
        num_attention_heads=4,  # 8
        num_key_value_heads=1,  # 1
        head_dim=64,  # 256 on sliding layers
        global_head_dim=128,  # 512 on global layers, proportional RoPE (default rope_parameters)
        hidden_size_per_layer_input=32,  # 256
        num_kv_shared_layers=5,  # 20: layers 5-9 reuse K/V of layer 3 (sliding) and 4 (global)
        use_double_wide_mlp=True,
        sliding_window=64,  # 512
        final_logit_softcapping=30.0,
        max_position_embeddings=2048,  # trained on SEQ-token windows only
        tie_word_embeddings=True,
        pad_token_id=special["<pad>"],
        bos_token_id=special["<bos>"],
        eos_token_id=special["<eos>"],
        rms_norm_eps=1e-6,
        initializer_range=0.02,
    )


def encode_stream(tok, paragraphs: list[str]) -> tuple[list[int], list[int]]:
    """Paragraphs joined by newlines, as token ids, and the offset where each paragraph starts."""
    newline = tok.encode("\n", add_special_tokens=False).ids
    ids, starts = [], []
    for enc in tok.encode_batch(paragraphs, add_special_tokens=False):
        starts.append(len(ids))
        ids.extend(enc.ids)
        ids.extend(newline)
    return ids[: -len(newline)], starts


def eval_chunks(ids: list[int], bos: int, seq: int = SEQ) -> torch.Tensor:
    """Non-overlapping windows `<bos>` + seq-1 tokens; every non-bos token is predicted exactly once."""
    n = (len(ids)) // (seq - 1)
    body = torch.tensor(ids[: n * (seq - 1)]).view(n, seq - 1)
    return torch.cat([torch.full((n, 1), bos), body], dim=1)


@torch.no_grad()
def mean_nll(model, chunks: torch.Tensor, batch: int = 16) -> float:
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        x = chunks[i : i + batch]
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += x[:, 1:].numel()
    return total / count


def unigram_nll(counts: list[int], targets: torch.Tensor) -> float:
    """Add-one smoothed unigram over the whole vocabulary, mean NLL of `targets`."""
    c = torch.tensor(counts, dtype=torch.float64) + 1.0
    logp = c.log() - c.sum().log()
    return -logp[targets.reshape(-1)].mean().item()


def make_trainable_layer_scalars(model) -> None:
    """`layer_scalar` is a buffer in transformers (ones at init); make it a parameter so it trains like E2B's."""
    for layer in model.model.layers:
        layer.layer_scalar = nn.Parameter(layer.layer_scalar.detach().clone())


def restore_layer_scalar_buffers(model) -> None:
    for layer in model.model.layers:
        value = layer.layer_scalar.detach().clone()
        del layer.layer_scalar
        layer.register_buffer("layer_scalar", value)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def untouched(model) -> list[str]:
    """Names of norm weights / layer scalars still exactly at their init value (ones)."""
    out = []
    for name, t in model.state_dict().items():
        if (name.endswith("norm.weight") or name.endswith("layer_scalar")) and bool((t == 1).all()):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "tiny")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--artifacts", type=Path, default=HERE, help="where heldout.txt, unigram_counts.json, REPORT.json go")
    args = ap.parse_args(argv)

    t_start = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    # 1. corpus
    paragraphs = corpus.paragraphs()
    train_paras, held_paras = corpus.split(paragraphs)
    print(f"corpus: {len(paragraphs)} paragraphs, {sum(map(len, paragraphs))} chars; "
          f"held-out {len(held_paras)} paragraphs, {sum(map(len, held_paras))} chars", flush=True)

    # 2. tokenizer
    tok = train_gemma_style_tokenizer(train_paras, args.vocab)
    special = {t: tok.token_to_id(t) for t in ["<pad>", "<eos>", "<bos>", "<turn|>"]}
    train_ids, train_starts = encode_stream(tok, train_paras)
    held_ids, _ = encode_stream(tok, held_paras)
    if held_ids != tok.encode("\n".join(held_paras), add_special_tokens=False).ids:
        raise AssertionError("paragraph-wise encoding differs from encoding the joined text")
    print(f"tokenizer: vocab {tok.get_vocab_size()}, train {len(train_ids)} tokens, held-out {len(held_ids)} tokens "
          f"({time.time() - t_start:.0f} s)", flush=True)

    # 3. model
    from transformers import Gemma4ForCausalLM, GenerationConfig

    config = model_config(tok.get_vocab_size(), special)
    # Keep the published configs' `global_head_dim` key beside the `per_layer_config` that transformers writes.
    config.global_head_dim = config.per_layer_config[config.layer_types.index("full_attention")].head_dim
    model = Gemma4ForCausalLM(config)
    make_trainable_layer_scalars(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters", flush=True)

    # 4. training
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    bos = special["<bos>"]
    data = torch.tensor(train_ids)
    starts = torch.tensor([s for s in train_starts if s + SEQ - 1 <= len(train_ids)])
    gen = torch.Generator().manual_seed(args.seed)
    held_chunks = eval_chunks(held_ids, bos)
    probe = held_chunks[:32]  # monitoring only; nothing is chosen by it
    history = []
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        pick = starts[torch.randint(len(starts), (args.batch,), generator=gen)]
        x = torch.stack([torch.cat([torch.tensor([bos]), data[s : s + SEQ - 1]]) for s in pick.tolist()])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{(step + 1) * args.batch * SEQ / el:.0f} tok/s  {el / 60:.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            model.eval()
            h = mean_nll(model, probe)
            model.train()
            history.append({"step": step + 1, "train_loss": loss.item(), "heldout_probe_loss": h})
            print(f"  held-out probe loss {h:.4f} (ppl {math.exp(h):.1f})", flush=True)
    train_seconds = time.time() - t_train
    model.eval()
    final_train_nll = mean_nll(model, eval_chunks(train_ids[-len(held_ids):], bos))  # same size as held-out, seen data

    # 5. save
    restore_layer_scalar_buffers(model)
    model.to(torch.bfloat16)
    still_init = untouched(model)  # checked in bf16, as saved: a small move can round back to exactly one
    if still_init:
        raise AssertionError(f"weights still at their init value after training: {still_init}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    template = (HERE / "chat_template.jinja").read_text()
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(template), indent=2) + "\n")
    GenerationConfig(  # Gemma 4's sampling defaults, with this tokenizer's ids
        bos_token_id=bos, pad_token_id=special["<pad>"], eos_token_id=[special["<eos>"], special["<turn|>"]],
        do_sample=True, temperature=1.0, top_k=64, top_p=0.95,
    ).save_pretrained(out)
    for f in out.iterdir():
        f.chmod(0o644)

    # 6. quality, from the saved folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    held_nll = mean_nll(model, held_chunks)
    counts = torch.bincount(torch.tensor(train_ids), minlength=tok.get_vocab_size()).tolist()
    uni_nll = unigram_nll(counts, held_chunks[:, 1:])
    continuations = []
    for prompt in PROMPTS:
        enc = hf_tok(prompt, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=40, do_sample=False)
        continuations.append({"prompt": prompt, "greedy": hf_tok.decode(ids[0, enc.input_ids.shape[1]:],
                                                                        skip_special_tokens=True)})
    size = sum(f.stat().st_size for f in out.iterdir())

    # Excerpt of the held-out text for the tests (whole paragraphs, ~24 KB), and the training split's token counts.
    excerpt, length = [], 0
    for p in held_paras:
        if length > 24_000:
            break
        excerpt.append(p)
        length += len(p) + 1
    (args.artifacts / "heldout.txt").write_text("\n".join(excerpt) + "\n")
    (args.artifacts / "unigram_counts.json").write_text(json.dumps(
        {"about": "token counts of the training split (tokenizer in tiny/), for the add-one unigram baseline",
         "total": len(train_ids), "counts": counts}) + "\n")
    report = {
        "corpus": {"package": "r-cran-janeaustenr 1.0.0-1 (Debian)", "paragraphs": len(paragraphs),
                   "train_tokens": len(train_ids), "heldout_tokens_evaluated": int(held_chunks[:, 1:].numel())},
        "parameters": n_params, "folder_bytes": size,
        "files": {f.name: f.stat().st_size for f in sorted(out.iterdir())},
        "steps": args.steps, "batch": args.batch, "seq": SEQ, "peak_lr": args.lr,
        "train_seconds": round(train_seconds), "total_seconds": round(time.time() - t_start),
        "final_train_loss": final_train_nll, "heldout_loss": held_nll, "heldout_ppl": math.exp(held_nll),
        "unigram_heldout_ppl": math.exp(uni_nll), "ratio": math.exp(held_nll) / math.exp(uni_nll),
        "history": history, "greedy": continuations,
    }
    (args.artifacts / "REPORT.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
