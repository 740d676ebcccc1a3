"""
Tokenizers: tiktoken's GPT-2 BPE (with the BPE files bundled for machines without network), the
character-level tokenizer of the Shakespeare corpus, and a Hugging Face model's own tokenizer (AutoTokenizer:
Llama 3, Qwen2.5, SmolLM2, Mistral, ...). A dataset's meta.json says which one it uses ("tokenizer": "gpt2",
"char" or "hf"); tokenizer_from_meta makes it.

Each has encode (plain text, no special tokens), decode, n_vocab, and `prefix`: the ids a document starts with
(a BOS token for models trained that way, else none). The vocabulary fingerprint (vocab_fingerprint, a hash of
the token -> id map) tells a dataset made with another tokenizer from the model's.
"""

import hashlib
import json
import os

import tiktoken

from inheritune.hub import hub_unreachable

GPT2_BPE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "gpt2_bpe")
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

    prefix = []

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

    prefix = []  # GPT-2 documents are separated by <|endoftext|> after each, none before

    def __init__(self):
        self.enc = gpt2_encoding()
        self.n_vocab = self.enc.n_vocab
        self.eot = GPT2_EOT

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_documents(self, texts):
        return [ids + [self.eot] for ids in self.enc.encode_ordinary_batch(texts)]

    def decode(self, ids):
        return self.enc.decode(list(ids))


class TokenizerError(ValueError):
    pass


def load_hf_tokenizer(source):
    """transformers' AutoTokenizer of a model folder or Hub id; a source without one is a one-line error."""
    from transformers import AutoTokenizer

    offline = "" if os.path.isdir(source) else hub_unreachable()  # a Hub id: from the cache only, when offline
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # no tokenizer files, offline Hub id, unknown class: the same advice
        first = offline or (str(e).strip().splitlines() or [""])[0][:200]
        raise TokenizerError(f"cannot load the Hugging Face tokenizer of {source} ({type(e).__name__}: {first}): "
                             f"pass a model folder with its tokenizer files (tokenizer.json, ...)") from None
    if len(tok.get_vocab()) <= len(set(tok.all_special_tokens)):  # transformers 5 makes one of special tokens only
        raise TokenizerError(f"{source} has no tokenizer files (transformers made an empty tokenizer): pass a "
                             f"model folder that holds them (tokenizer.json, ...)")
    return tok


def vocab_fingerprint(vocab):
    """A short hash of a {token: id} vocabulary: equal for the same tokenizer, whatever file it was read from."""
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()[:16]


def hf_tokenizer_meta(source):
    """meta.json's record of a Hugging Face tokenizer. A document starts with BOS when the tokenizer adds one itself
    (Llama 2 and 3, Mistral; not Qwen2.5 or SmolLM2) and ends with EOS when it has one, as the model was pre-trained."""
    tok = load_hf_tokenizer(source)
    vocab = tok.get_vocab()
    plain, with_special = tok("a", add_special_tokens=False)["input_ids"], tok("a")["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return dict(tokenizer="hf", tokenizer_source=os.path.abspath(source) if os.path.isdir(source) else source,
                tokenizer_fingerprint=vocab_fingerprint(vocab), vocab_size=max(vocab.values()) + 1,
                bos_token_id=bos, eos_token_id=eos,
                bos_per_document=bos is not None and with_special[:1] == [bos] and plain[:1] != [bos],
                eos_per_document=eos is not None)


class HFTokenizer:
    """A Hugging Face tokenizer as meta.json records it (hf_tokenizer_meta); refuses a tokenizer whose vocabulary
    is not the recorded one (a model folder replaced since the data was made)."""

    def __init__(self, meta):
        self.tok = load_hf_tokenizer(meta["tokenizer_source"])
        found = vocab_fingerprint(self.tok.get_vocab())
        if found != meta["tokenizer_fingerprint"]:
            raise TokenizerError(f"the tokenizer at {meta['tokenizer_source']} (vocabulary {found}) is not the one "
                                 f"recorded ({meta['tokenizer_fingerprint']}): it changed since the data was prepared")
        self.n_vocab = meta["vocab_size"]
        self.prefix = [meta["bos_token_id"]] if meta["bos_per_document"] else []
        self.suffix = [meta["eos_token_id"]] if meta["eos_per_document"] else []
        if meta["eos_token_id"] is not None:
            self.eot = meta["eos_token_id"]

    def encode(self, text):
        """Plain text: special tokens written in it are text too, as GPT-2's encode_ordinary."""
        return self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_documents(self, texts):
        """Token ids of each document as the model was trained on them: prefix + text + suffix."""
        batch = self.tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [self.prefix + ids + self.suffix for ids in batch]

    def decode(self, ids):
        return self.tok.decode(list(ids))


def tokenizer_from_meta(meta):
    """The tokenizer a prepared dataset was made with (meta.json's "tokenizer", and "chars" for char)."""
    makers = {"gpt2": GPT2Tokenizer, "char": lambda: CharTokenizer(meta["chars"]), "hf": lambda: HFTokenizer(meta)}
    if meta["tokenizer"] not in makers:
        raise ValueError(f"unknown tokenizer {meta['tokenizer']!r} in meta.json (expected 'gpt2', 'char' or 'hf')")
    return makers[meta["tokenizer"]]()


def meta_fingerprint(meta):
    """The vocabulary fingerprint of a meta.json's tokenizer (computed for gpt2 and char, recorded for hf)."""
    if meta["tokenizer"] == "gpt2":
        with open(os.path.join(GPT2_BPE_DIR, "encoder.json"), encoding="utf-8") as f:
            return vocab_fingerprint(json.load(f))
    if meta["tokenizer"] == "char":
        return vocab_fingerprint({c: i for i, c in enumerate(meta["chars"])})
    return meta.get("tokenizer_fingerprint")


def describe(meta):
    """A tokenizer in words, for error messages."""
    if meta["tokenizer"] == "hf":
        return f"the tokenizer of {meta['tokenizer_source']}"
    return {"gpt2": "GPT-2 BPE", "char": "a character-level tokenizer"}.get(meta["tokenizer"], meta["tokenizer"])
