"""Chatting with a small model from Python: load, ask, stream, and see where the memory goes.

Run: python examples/chat.py   (the command-line equivalent is `lmblocks chat`)
"""

import lmblocks as lb

# The default model: SmolLM2-135M-Instruct, 4-bit (Q4_1) GGUF. Its weights stay memory-mapped;
# the progress bar on stderr is the native model being built layer by layer.
model = lb.load(lb.assets.smollm2_135m())
print(model)

# A conversation is a list of messages; the model's own chat template turns it into tokens.
# temperature=0 picks the most likely token each step, so this answer is the same on every run.
messages = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
answer = model.generate(messages, max_tokens=64, temperature=0)
print(f"\nuser: {messages[-1]['content']}\nassistant: {answer}")

# Keep the answer in the history and ask a follow-up, this time sampled (seeded, so repeatable)
# and printed piece by piece as the tokens come out.
messages += [{"role": "assistant", "content": answer},
             {"role": "user", "content": "Name three things to see there."}]
print(f"\nuser: {messages[-1]['content']}\nassistant: ", end="", flush=True)
for piece in model.stream(messages, max_tokens=128, temperature=0.7, seed=0):
    print(piece, end="", flush=True)
print()

# Bytes: weights used in place from the file, copies made at load, and the last KV cache.
print("\nmemory:", ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in model.memory().items()))
