"""The `webgemma` command: export, generate, site, serve and demo.

CPython only. Each subcommand imports what it needs when it runs, so `webgemma generate` never loads the
exporter and the browser wheel never runs this module.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from pathlib import Path

BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "tiny"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("webgemma: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # ExportError, ManifestError, ContextLimitError... all say what to do
        print(f"webgemma: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webgemma", description="Gemma 4 E2B/E4B in the browser, with Python on both ends.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    e = sub.add_parser("export", help="convert a Hugging Face Gemma 4 checkpoint into a webgemma model folder")
    e.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_DIR")
    e.add_argument("out", type=Path, metavar="OUT_DIR")
    e.add_argument("--quant", default="int4", help="int4 (default), int8, fp16 or fp32 weights")
    e.add_argument("--block-size", type=int, default=32, help="values per quantization block (default 32)")
    e.add_argument("--shard-mb", type=float, default=64, help="largest file and tensor, MiB (default 64)")
    e.set_defaults(run=_export)

    g = sub.add_parser("generate", help="generate text with an exported model on onnxruntime (CPU)")
    g.add_argument("model", type=Path, metavar="MODEL_DIR")
    g.add_argument("prompt", metavar="PROMPT")
    g.add_argument("--raw", action="store_true", help="feed PROMPT as is, without the chat template")
    g.add_argument("--system", help="system prompt (chat mode)")
    g.add_argument("--thinking", action="store_true", help="ask the model to think first (chat mode)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy; default: the model's generation config, else 1")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--json", action="store_true", help='print {"prompt_ids", "output_ids", "text"} instead of streaming')
    g.set_defaults(run=_generate)

    s = sub.add_parser("site", help="assemble a self-contained static site for a model folder")
    s.add_argument("model", type=Path, metavar="MODEL_DIR")
    s.add_argument("out", type=Path, metavar="OUT_DIR")
    s.add_argument("--pyodide", choices=["local", "cdn"], default="local", help="vendor Pyodide (default) or load it from a CDN")
    s.add_argument("--model-url", help="serve the model from this URL instead of copying it into the site")
    s.set_defaults(run=_site)

    v = sub.add_parser("serve", help="serve a site on localhost with the right MIME types and COOP/COEP headers")
    v.add_argument("site", type=Path, metavar="SITE_DIR")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.set_defaults(run=_serve)

    d = sub.add_parser("demo", help="export the built-in model, build its site and serve it")
    d.add_argument("--out", type=Path, default=Path("static"), help="site folder (default ./static)")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--check", action="store_true", help="build and verify the site, then exit instead of serving")
    d.set_defaults(run=_demo)
    return p


def _export(args) -> None:
    from webgemma_export.export import export

    export(args.checkpoint, args.out, quant=args.quant, block_size=args.block_size, shard_mb=args.shard_mb)


def _generate(args) -> None:
    from .backends.ort_native import NativeBackend
    from .generation import GenerationSettings
    from .model import load_model
    from .sampling import SamplingSettings
    from .storage_local import LocalStore

    if not (args.model / "manifest.json").is_file():
        raise FileNotFoundError(f"{args.model} is not a webgemma model folder (no manifest.json): "
                                f"create one with `webgemma export CHECKPOINT_DIR {args.model}`")

    async def run():
        model = await load_model(LocalStore(args.model), lambda m: NativeBackend(args.model, m))
        defaults = model.manifest.raw.get("generation", {})
        sampling = SamplingSettings(
            temperature=args.temperature if args.temperature is not None else defaults.get("temperature", 1.0),
            top_p=args.top_p if args.top_p is not None else defaults.get("top_p", 1.0),
            top_k=args.top_k if args.top_k is not None else defaults.get("top_k", 0),
            min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
        )
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, sampling=sampling, stop_strings=tuple(args.stop))
        stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
        if args.raw:
            result = await model.generator.generate(model.encode_raw(args.prompt), settings, stream)
        else:
            result = await model.chat(system=args.system, thinking=args.thinking).send(args.prompt, settings, stream)
        if args.json:
            print(json.dumps({"prompt_ids": result.prompt_ids, "output_ids": result.output_ids, "text": result.text}, ensure_ascii=False))
        else:
            s = result.stats
            print(f"\n[{result.finish_reason}; {len(result.output_ids)} tokens, {s['tokens_per_s']:.1f} tokens/s, "
                  f"first token after {s['ttft_ms']:.0f} ms]", file=sys.stderr)

    asyncio.run(run())


def _site(args) -> None:
    from webgemma_site.build import build_site

    build_site(args.model, args.out, pyodide=args.pyodide, model_url=args.model_url)
    print(f"site written to {args.out}; serve it with: webgemma serve {args.out}")


def _serve(args) -> None:
    from webgemma_site.serve import serve

    serve(args.site, host=args.host, port=args.port)


def _demo(args) -> None:
    from webgemma_export.export import export
    from webgemma_site.build import build_site, check_site
    from webgemma_site.serve import serve

    if not (BUILTIN_CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(f"the built-in checkpoint is missing ({BUILTIN_CHECKPOINT}): run from a clone of the repository")
    digest = hashlib.sha256((BUILTIN_CHECKPOINT / "model.safetensors").read_bytes()).hexdigest()[:12]
    model_dir = Path(".cache") / f"webgemma-tiny-int4-{digest}"  # re-exported whenever the built-in model changes
    if not (model_dir / "manifest.json").is_file():
        export(BUILTIN_CHECKPOINT, model_dir, quant="int4")
    build_site(model_dir, args.out)
    check_site(args.out)
    if args.check:
        print(f"site {args.out} built and checked")
        return
    print(f"open http://127.0.0.1:{args.port}/ in a browser with WebGPU (Chrome/Edge 121+); Ctrl+C stops")
    serve(args.out, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    sys.exit(main())
