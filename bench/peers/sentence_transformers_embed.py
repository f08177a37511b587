#!/usr/bin/env python3
"""Reference throughput of sentence-transformers (PyTorch CPU) on the ML-1M titles,
to compare with `cargo run --release -p llmrec-llm --example llm_bench -- embed`.

    python3 bench/peers/sentence_transformers_embed.py path/to/ml-1m/movies.dat [threads]

Pinned versions and the measuring protocol: bench/peers/README.md.
"""
import sys
import time
from pathlib import Path
import os

import torch
from sentence_transformers import SentenceTransformer

root = Path(__file__).resolve().parents[2]  # the repository root
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
lines = Path(sys.argv[1]).read_bytes().decode("latin-1").splitlines()
texts = []
for l in lines:
    _id, title, genres = l.split("::")
    texts.append(f"{title} ({genres.replace('|', ', ')})")
model_dir = Path(os.environ.get("LLMREC_MODELS_DIR", root / "models")) / "all-MiniLM-L6-v2"
model = SentenceTransformer(str(model_dir), device="cpu")
model.encode(texts[:64])
for bs in (32, 128):
    t0 = time.perf_counter()
    model.encode(texts, batch_size=bs, normalize_embeddings=True)
    s = time.perf_counter() - t0
    print(f"sentence-transformers {threads} threads, batch {bs}: {len(texts)} in {s:.2f}s = {len(texts)/s:.0f} sentences/s")
