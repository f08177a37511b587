#!/usr/bin/env python3
"""Writes crates/llm/tests/fixtures/minilm_fixture.json: all-MiniLM-L6-v2 embeddings
of a few varied sentences, computed with the reference sentence-transformers (CPU torch).

    pip install sentence-transformers
    scripts/fetch-models.sh
    python3 scripts/make_embedding_fixture.py [MODEL_DIR]

MODEL_DIR defaults to $LLMREC_MODELS_DIR/all-MiniLM-L6-v2 (./models/...).
"""
import html
import json
import os
import sys
from pathlib import Path

from sentence_transformers import SentenceTransformer

root = Path(__file__).resolve().parent.parent
model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(
    os.environ.get("LLMREC_MODELS_DIR", root / "models")) / "all-MiniLM-L6-v2"
out = root / "crates/llm/tests/fixtures/minilm_fixture.json"

long_text = " ".join(
    f"Sentence {i} of a very long product description with many words, numbers like {i * 37} and punctuation;"
    for i in range(30))  # well over 256 word pieces: exercises truncation

sentences = [
    "Toy Story (1995) (Animation, Children's, Comedy)",
    "Jumanji (1995) (Adventure, Children's, Fantasy)",
    "GoldenEye (1995) (Action, Adventure, Thriller)",
    "City of Lost Children, The (Cité des enfants perdus, La) (1995) (Adventure, Sci-Fi)",
    "Star Wars: Episode IV - A New Hope (1977) (Action, Adventure, Fantasy, Sci-Fi)",
    "Shawshank Redemption, The (1994) (Drama)",
    "Crouching Tiger, Hidden Dragon (Wu hu zang long) (2000) (Action, Drama, Romance)",
    html.unescape("L&#39;Or&eacute;al Paris Revitalift Anti-Wrinkle &amp; Firming Night Cream (Beauty, Skin Care; brand: L&#39;Oreal Paris)"),
    html.unescape("Neutrogena Hydro Boost Water Gel, 1.7 oz &ndash; fragrance-free (Beauty, Skin Care, Face; brand: Neutrogena)"),
    html.unescape("OPI Nail Lacquer &quot;Big Apple Red&quot; 0.5 fl oz (Beauty, Makeup, Nails; brand: OPI)"),
    "Maybelline Great Lash Mascara, Blackest Black (Beauty, Makeup, Eyes; brand: Maybelline)",
    "a",
    "",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!!!",
    "naïve café résumé — über façade, 東京 タワー, emoji 🎬🍿",
    "Price: $19.99 (was $29.99); SKU #A-1234/5; 100% cotton.",
    "I loved this moisturizer, it made my skin soft and it smells great, would buy again.",
    "A user who watched Alien, Aliens and The Terminator will probably enjoy",
    "   leading and trailing   whitespace   ",
    long_text,
]

model = SentenceTransformer(str(model_dir), device="cpu")
assert model.max_seq_length == 256, model.max_seq_length
emb = model.encode(sentences, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
ntok = [len(model.tokenizer(s, truncation=True, max_length=256)["input_ids"]) for s in sentences]
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "w") as f:
    json.dump({
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "made_by": "scripts/make_embedding_fixture.py",
        "max_seq_length": model.max_seq_length,
        "items": [
            {"text": s, "n_tokens": n, "embedding": [round(float(x), 6) for x in e]}
            for s, n, e in zip(sentences, ntok, emb)
        ],
    }, f, ensure_ascii=False, indent=1)
print(f"wrote {out} ({len(sentences)} sentences, tokens {ntok})")
