"""Checks `llmrec lm export --format hf` against transformers' own reading of the GGUF.

Loads the exported folder and the base GGUF file with transformers (float32), and
prints, as JSON, the largest logit difference over a prompt and whether the two
tokenizers give the same ids (and chat template text) on a few texts. With no
adapter merged, the two models are the same weights and should agree to float
rounding.

    llmrec lm export --format hf --adapter ZERO_OR_TRAINED --out EXPORT_DIR
    python3 scripts/reference/hf_export_parity.py MODEL_DIR GGUF_NAME EXPORT_DIR

Needs the versions in bench/peers/requirements.txt (torch, transformers, gguf).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = ["Hello world", "The Matrix (1999) [Action, Sci-Fi]\n- Toy Story (1995)", "  naïve café 東京 🙂 1234"]


def main():
    model_dir, gguf, export = sys.argv[1], sys.argv[2], sys.argv[3]
    ref_tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
    tok = AutoTokenizer.from_pretrained(export)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": "I liked Heat (1995). What next?"}]
    same_ids = all(tok.encode(t, add_special_tokens=False) == ref_tok.encode(t, add_special_tokens=False)
                   for t in TEXTS)
    same_chat = (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                 == ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    text = ref_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([ref_tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        a = ref(input_ids=ids).logits[0]
        b = ours(input_ids=ids).logits[0]
    print(json.dumps({"tokens": ids.shape[1], "max_abs_logit_diff": (a - b).abs().max().item(),
                      "same_argmax": bool((a.argmax(-1) == b.argmax(-1)).all()),
                      "same_token_ids": same_ids, "same_chat_text": same_chat}))


if __name__ == "__main__":
    main()
