"""Hard cases for fusion-clip's tokenizer, encoded by Hugging Face `tokenizers` (the library
behind CLIPTokenizerFast) from the golden checkpoint's tokenizer.json.

Usage (from this folder): python make_tokenizer_cases.py ../clip-tiny/model/tokenizer.json

Writes cases.json: a list of {"text": ..., "ids": [...]}, ids with <|startoftext|> and
<|endoftext|>, neither truncated nor padded.
"""
import json, sys
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
texts = [
    "don't stop: it's 3.14159, we'll see!",
    "  leading and   trailing\twhitespace\n\nnewlines  ",
    "ÉCOLE Crème brûlée ΣΊΣΥΦΟΣ straße",
    "e\u0301 (decomposed) vs \u00e9 (composed)",
    "日本語のテキスト 中文 한국어",
    "emoji 🐶🐱 and symbols ©®™ ½ ² ٣",
    "numbers 2024 and 1,000,000 and v2.0",
    "a photo of a <|endoftext|> inside <|startoftext|>text",
    "CamelCase snake_case kebab-case URL: https://example.com/a?b=c",
    "'s 't 're 've 'm 'll 'd ''quoted''",
    "zero\u200bwidth\u00a0nbsp",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]
cases = [{"text": t, "ids": tok.encode(t).ids} for t in texts]
with open("cases.json", "w") as f:
    json.dump(cases, f, ensure_ascii=False, indent=1)
for c in cases:
    print(len(c["ids"]), c["text"][:40])
