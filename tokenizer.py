"""
Tokenizers: tiktoken's GPT-2 BPE (with the BPE files bundled for machines without network) and the
character-level tokenizer of the Shakespeare corpus. A dataset's meta.json says which one it uses.
"""

import os

import tiktoken

GPT2_BPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gpt2_bpe")
GPT2_EOT = 50256


def gpt2_encoding():
    """tiktoken's "gpt2" encoding; built from data/gpt2_bpe/ when the download (or its cache) is unavailable."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # no network: requests' ConnectionError, or a proxy's error page
        pass
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(GPT2_BPE_DIR, "vocab.bpe"),
        encoder_json_file=os.path.join(GPT2_BPE_DIR, "encoder.json"),
        # the hashes tiktoken pins for these files
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    )
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=50257)


class CharTokenizer:
    """One id per character of a fixed alphabet, as nanoGPT's shakespeare_char."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.n_vocab = len(self.chars)

    def encode(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters {unknown[:10]} are not in this character-level vocabulary")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class GPT2Tokenizer:
    """encode/decode over tiktoken's gpt2 encoding (encode_ordinary: special tokens are plain text)."""

    def __init__(self):
        self.enc = gpt2_encoding()
        self.n_vocab = self.enc.n_vocab
        self.eot = GPT2_EOT

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(list(ids))


def tokenizer_from_meta(meta):
    """The tokenizer a prepared dataset was made with (meta.json's "tokenizer", and "chars" for char)."""
    if meta["tokenizer"] == "gpt2":
        return GPT2Tokenizer()
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    raise ValueError(f"unknown tokenizer {meta['tokenizer']!r} in meta.json (expected 'gpt2' or 'char')")
