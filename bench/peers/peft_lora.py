"""LoRA fine-tuning throughput of PyTorch + PEFT, the peer of `llmrec lm finetune`.

Same GGUF file (transformers dequantises it to f32), same chat JSONL, same LoRA
settings (rank 8, alpha 16, dropout 0.05, q/k/v/o), AdamW at 2e-4, micro-batches
of 4 right-padded examples sorted by length (as llmrec batches them), the loss on
the answer tokens only, gradient clipping at 1.0. Prints training tokens per second
over non-padding tokens, counted over every step (as llmrec's round does) and
without the first step.

    python3 bench/peers/peft_lora.py MODEL_DIR GGUF_NAME DATA.jsonl [STEPS] [THREADS]

It trains on the first 4 * STEPS examples of DATA.jsonl.
"""
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_dir, gguf, data = sys.argv[1], sys.argv[2], sys.argv[3]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    rows = []
    with open(data) as f:
        for line in f:
            msgs = json.loads(line)["messages"]
            text = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            answer = tok(msgs[-1]["content"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
            rows.append((prompt, answer))
            if len(rows) >= 4 * steps:
                break
    rows.sort(key=lambda r: len(r[0]) + len(r[1]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def batch(chunk):
        n = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), n), pad)
        labels = torch.full((len(chunk), n), -100)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        real = 0
        for i, (p, a) in enumerate(chunk):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(a)
            mask[i, : len(seq)] = 1
            real += len(seq)
        return ids, labels, mask, real

    batches = [batch(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    tokens, warm, t0 = 0, 0, time.perf_counter()
    for k, (ids, labels, mask, real) in enumerate(batches):
        if k == 1:
            t1 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        tokens += real
        if k == 0:
            warm = real
    t2 = time.perf_counter()
    print(json.dumps({"peer": "torch+peft", "torch": torch.__version__, "threads": threads,
                      "steps": len(batches), "tokens": tokens, "seconds": t2 - t0,
                      "tokens_per_sec": tokens / (t2 - t0),
                      "tokens_per_sec_after_first": (tokens - warm) / (t2 - t1)}))


if __name__ == "__main__":
    main()
