"""Reference tokens and logits of Gemma 3 270M (Q4_K_M GGUF) from transformers.

Writes the fixture the Gemma 3 parity tests compare llmrec's local backend with:
the token ids transformers gives each text (its tokenizer read from the GGUF
file), and for chosen positions of each prompt the 8 largest next-token logits
and the log-sum-exp over the vocabulary, computed in float32 (transformers
dequantises the file's weights to float32). One prompt is longer than the
512-token sliding window, so the windowed layers are exercised.

    python3 scripts/reference/gemma3_reference.py MODEL_DIR OUT.json

Needs the versions in bench/peers/requirements.txt (torch, transformers, gguf).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "gemma-3-270m-q4_k_m.gguf"

TEXTS = [
    "Hello world",
    "The Matrix (1999) [Action, Sci-Fi]\n- Toy Story",
    "  two  spaces",
    "naïve café 東京 🙂",
    "<start_of_turn>user\nhi<end_of_turn>\n",
]


def long_prompt():
    titles = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)",
              "Fargo (1996)", "Twister (1996)", "Scream (1996)", "Titanic (1997)"]
    lines = [f"- {titles[i % len(titles)]}, watched as number {i}" for i in range(40)]
    return ("<bos><start_of_turn>user\nThe user watched these movies, oldest first:\n"
            + "\n".join(lines) + "\nWhat should they watch next?<end_of_turn>\n<start_of_turn>model\n")


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    fixture = {"model": GGUF, "texts": [], "prompts": []}
    for t in TEXTS:
        fixture["texts"].append({"text": t, "ids": tok.encode(t, add_special_tokens=False)})
    prompts = ["<bos>The capital of France is", long_prompt()]
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        n = len(ids)
        positions = sorted({0, 1, n // 2, 511, 512, 600, n - 1} & set(range(n)))
        rows = []
        for pos in positions:
            row = logits[pos]
            top = torch.topk(row, 8)
            rows.append({"position": pos, "top_ids": top.indices.tolist(),
                         "top_logits": top.values.tolist(),
                         "logsumexp": torch.logsumexp(row, 0).item()})
        fixture["prompts"].append({"text": p, "ids": ids, "rows": rows})
    with open(out, "w") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
