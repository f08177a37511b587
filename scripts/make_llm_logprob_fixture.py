#!/usr/bin/env python3
"""Writes crates/llm/tests/fixtures/smollm2_logprob_fixture.json: token ids and
float32 PyTorch log-probabilities of candidate continuations of chat prompts,
from SmolLM2-135M-Instruct.Q4_1.gguf dequantized by transformers (the float
reference for the local backend's exact scoring path).

    pip install sentence-transformers gguf   # transformers + torch + gguf
    scripts/fetch-models.sh
    python3 scripts/make_llm_logprob_fixture.py
"""
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

root = Path(__file__).resolve().parent.parent
models = Path(os.environ.get("LLMREC_MODELS_DIR", root / "models"))
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
out = root / "crates/llm/tests/fixtures/smollm2_logprob_fixture.json"

tok = AutoTokenizer.from_pretrained(models, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(models, gguf_file=gguf, torch_dtype=torch.float32)
model.eval()

cases = [
    {
        "messages": [
            {"role": "system", "content": "You recommend movies. Answer with one title only."},
            {"role": "user", "content": "I liked Toy Story (1995) and Aladdin (1992). What should I watch next?"},
        ],
        "candidates": ["Toy Story 2 (1999)", "The Lion King", "Heat", "x"],
    },
    {
        "messages": [
            {"role": "user", "content": "Rate the product 'Neutrogena Hydro Boost Water Gel' from 1 to 5 for a user who loves moisturizers. Answer with a digit."},
        ],
        "candidates": ["5", "4", "1", "3 stars"],
    },
]
items = []
with torch.no_grad():
    for c in cases:
        prompt = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        cands = []
        for cand in c["candidates"]:
            c_ids = tok(cand, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + c_ids])
            logits = model(ids).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            total = sum(float(lp[len(p_ids) - 1 + i, t]) for i, t in enumerate(c_ids))
            cands.append({"text": cand, "ids": c_ids, "total": total})
        items.append({"messages": c["messages"], "prompt": prompt, "prompt_ids": p_ids, "candidates": cands})
with open(out, "w") as f:
    json.dump({"model": gguf, "made_by": "scripts/make_llm_logprob_fixture.py", "cases": items}, f, ensure_ascii=False, indent=1)
print("wrote", out)
for it in items:
    print([(c["text"], round(c["total"], 4)) for c in it["candidates"]])
