"""The tokenizer a GGUF file describes, rebuilt from its ``tokenizer.*`` metadata the way
``transformers`` rebuilds it (``AutoTokenizer.from_pretrained(dir, gguf_file=name)``), so
that the ids match token for token, special tokens included.

Two vocabularies (``tokenizer.ggml.model``):

* ``"llama"``: SentencePiece-style BPE over ``▁``-spelled pieces with byte fallback
  (Llama 1/2, Mistral, Gemma). The file usually lists no merges; they are derived from
  the vocabulary, ranked by the piece scores (Gemma: by the pieces' order in the file,
  since Gemma's scores do not follow its merge order).
* ``"gpt2"``: byte-level BPE with the file's merges (Llama 3, Qwen2/3), split first by
  the regular expression ``tokenizer.ggml.pre`` names.

Every ``tokenizer.*`` key is consumed, on the short harmless list below, or refused.
Needs the ``tokenizers`` package only; the metadata arrives as a plain dict.
"""

from __future__ import annotations

from bisect import bisect_left

from sbsnn.errors import brief
from sbsnn.models.errors import CheckpointError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4

# The text split of a byte-level vocabulary, by tokenizer.ggml.pre. These are the models'
# own pre-tokenizer expressions (Llama 3's tiktoken pattern; Qwen2's, which splits digits
# one by one). "gpt-2" keeps the ByteLevel pre-tokenizer's built-in GPT-2 expression.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# SmolLM / SmolLM2: every digit alone, then the GPT-2 expression (its tokenizer.json's
# Digits(individual_digits) + ByteLevel(use_regex) sequence; llama.cpp's "smollm").
_DIGITS_THEN_GPT2 = "digits, then gpt-2"
BYTE_LEVEL_SPLITS = {
    "gpt-2": None, "smollm": _DIGITS_THEN_GPT2,
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# Architectures whose SentencePiece vocabulary is Gemma's (spaces, not ▁, in space-only
# pieces; no prefix space).
_GEMMA_ARCHS = {"gemma", "gemma2", "gemma3"}

# Keys read below.
USED_KEYS = {
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.add_sep_token",
    "tokenizer.ggml.remove_extra_whitespaces", "tokenizer.ggml.precompiled_charsmap",
}
# Keys that change neither the ids of encode() nor the text of decode(): ids llama.cpp
# uses for chat turns, infill and BERT-style pairs, chat templates, and the HF tokenizer
# JSON some converters embed (transformers builds from the tokenizer.ggml.* keys too).
HARMLESS_KEYS = {
    "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.cls_token_id", "tokenizer.ggml.token_type_count",
    "tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id",
    "tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.fim_pad_token_id",
    "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id",
    "tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id",
    "tokenizer.ggml.middle_token_id", "tokenizer.chat_template", "tokenizer.chat_templates",
    "tokenizer.huggingface.json",
}


# The value types the keys read must have (a file may hold any GGUF type under any key).
_LISTS = {"tokenizer.ggml.tokens": (str,), "tokenizer.ggml.merges": (str,),
          "tokenizer.ggml.scores": (int, float), "tokenizer.ggml.token_type": (int,)}
_STRINGS = {"tokenizer.ggml.model", "tokenizer.ggml.pre"}
_IDS = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"}
_FLAGS = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
          "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.add_sep_token",
          "tokenizer.ggml.remove_extra_whitespaces"}
# Deriving a SentencePiece vocabulary's merges tries each piece's splits at the lengths of
# the vocabulary's pieces: about sum(len(piece) * distinct lengths) character steps. Real
# vocabularies need a few million (Gemma 3's 262,144 pieces: 2e7); a file of long pieces
# would take hours, so it is refused above this budget.
MERGE_WORK_BUDGET = 400_000_000


def _short(value) -> str:
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(repr(v)[:20] for v in value[:4])}, ... ({len(value):,} items)]"
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def check_tokenizer_types(meta: dict, source: str) -> None:
    """Refuse, by key, a tokenizer key whose value has the wrong type (a GGUF file may
    store any type under any key)."""
    def bad(key, what):
        raise CheckpointError(f"{source}: {key}={_short(meta[key])}: {what} is expected")

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for key, kinds in _LISTS.items():
        v = meta.get(key)
        if v is not None and not (isinstance(v, list) and all(
                isinstance(x, kinds) and not isinstance(x, bool) for x in v)):
            bad(key, f"an array of {' or '.join(k.__name__ for k in kinds)}")
    for key in _STRINGS:
        if key in meta and not isinstance(meta[key], str):
            bad(key, "a string")
    for key in _IDS:
        if key in meta and not (whole(meta[key]) and meta[key] >= 0):
            bad(key, "a token id (an integer >= 0)")
    for key in _FLAGS:
        if key in meta and not isinstance(meta[key], (bool, int)):
            bad(key, "true or false")


def is_known_key(key: str) -> bool:
    return key in USED_KEYS or key in HARMLESS_KEYS or key.startswith("tokenizer.chat_template.")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of the 256 byte values (byte-level BPE's alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def derive_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary: every split of a piece into two pieces that are
    both in the vocabulary, best-scored piece first; among equal scores the longer left
    part first, then the pieces' order in ``scores`` (transformers' ``generate_merges``)."""
    lengths = sorted({len(p) for p in vocab})  # a left part has one of these lengths
    ranked = [(piece[:i], piece[i:], score) for piece, score in scores.items()
              for i in lengths[:bisect_left(lengths, len(piece))] if i
              and piece[:i] in vocab and piece[i:] in vocab]
    # stable, descending on (score, len(left), len(right)); one piece's splits never tie
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def _split_merges(merges: list[str], refuse) -> list[tuple[str, str]]:
    """``"left right"`` strings as pairs; anything else is refused by index."""
    pairs = [tuple(m.split(" ")) for m in merges]
    bad = next((i for i, p in enumerate(pairs) if len(p) != 2 or not all(p)), None)
    if bad is not None:
        refuse("tokenizer.ggml.merges", f"merge #{bad} {merges[bad]!r:.60} is not two pieces "
                                        "separated by one space")
    return pairs


def _flag(meta: dict, key: str, default):
    value = meta.get(key, default)
    return default if value is None else bool(value)


def build_tokenizer(meta: dict, arch: str, source: str):
    """A ``tokenizers.Tokenizer`` from a GGUF's metadata. ``meta`` maps keys to plain
    Python values (string arrays as lists of str); ``source`` names the file in errors."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers import processors
        from tokenizers.models import BPE
    except ImportError as e:
        raise ImportError(f"{source}: its tokenizer needs the 'tokenizers' package: "
                          "pip install 'sbsnn[gguf]'") from e

    def refuse(key, why):
        raise CheckpointError(f"{source}: {key}={brief(meta.get(key))}: {why}")

    check_tokenizer_types(meta, source)

    for key in meta:
        if key.startswith("tokenizer.") and not is_known_key(key):
            refuse(key, "unknown tokenizer metadata key; refusing rather than guessing whether "
                        "it changes tokenization")
    kind = meta.get("tokenizer.ggml.model")
    if kind not in ("llama", "gpt2"):
        refuse("tokenizer.ggml.model", "unsupported tokenizer model; supported: 'llama' "
                                       "(SentencePiece BPE) and 'gpt2' (byte-level BPE)")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        refuse("tokenizer.ggml.tokens", "the vocabulary is missing or empty")
    types = meta.get("tokenizer.ggml.token_type") or []
    if types and len(types) != len(tokens):
        refuse("tokenizer.ggml.token_type", f"{len(types)} types for {len(tokens)} tokens")
    if _flag(meta, "tokenizer.ggml.add_sep_token", False):
        refuse("tokenizer.ggml.add_sep_token", "appending a separator token is not supported "
                                               "(transformers ignores this flag)")
    if _flag(meta, "tokenizer.ggml.remove_extra_whitespaces", False):
        refuse("tokenizer.ggml.remove_extra_whitespaces",
               "whitespace collapsing is not supported (transformers ignores this flag)")
    if meta.get("tokenizer.ggml.precompiled_charsmap"):
        refuse("tokenizer.ggml.precompiled_charsmap",
               "a SentencePiece normalization map is not supported for this vocabulary "
               "(transformers ignores it)")
    pre = meta.get("tokenizer.ggml.pre")
    gemma = arch in _GEMMA_ARCHS

    if kind == "llama":
        if pre not in (None, "default"):
            refuse("tokenizer.ggml.pre", "a SentencePiece vocabulary is expected to have "
                                         "pre-tokenizer 'default'")
        prefix = meta.get("tokenizer.ggml.add_space_prefix")
        if prefix is not None and bool(prefix) == gemma:
            refuse("tokenizer.ggml.add_space_prefix",
                   f"transformers {'never' if gemma else 'always'} adds the prefix space for "
                   f"architecture {arch!r}; the file says otherwise")
        if gemma:  # space-only pieces are stored with real spaces; BPE looks them up as ▁
            pieces = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
            scores = {t: -i for i, t in enumerate(pieces)}
        else:
            pieces = list(tokens)
            s = meta.get("tokenizer.ggml.scores")
            if s is None or len(s) != len(tokens):
                refuse("tokenizer.ggml.scores", "a SentencePiece vocabulary needs one score "
                                                "per token to rank its merges")
            scores = dict(zip(pieces, (float(x) for x in s)))
        vocab = {t: i for i, t in enumerate(pieces)}
        merges = meta.get("tokenizer.ggml.merges")
        if not merges:
            distinct = len({len(p) for p in pieces})
            work = sum(len(p) * min(len(p), distinct) for p in pieces)
            if work > MERGE_WORK_BUDGET:
                refuse("tokenizer.ggml.tokens", f"pieces this long ({work:,} steps to derive "
                       f"the merges, the bound is {MERGE_WORK_BUDGET:,}) are not a SentencePiece "
                       "vocabulary's; give the merges in tokenizer.ggml.merges")
        merges = _split_merges(merges, refuse) if merges else derive_merges(vocab, scores)
        try:
            bpe = (BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token="<unk>",
                       byte_fallback=True, dropout=None) if gemma else
                   BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
        except Exception as e:  # tokenizers' own errors (a merge of unknown pieces)
            refuse("tokenizer.ggml.merges", f"the merges do not fit the vocabulary ({e})")
        if gemma:
            tok = Tokenizer(bpe)
            tok.normalizer = normalizers.Replace(" ", "▁")
            tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                             decoders.Fuse()])
        else:
            tok = Tokenizer(bpe)
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                         split=False)
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                             decoders.Fuse(), decoders.Strip(content=" ", left=1)])
        default_bos = True  # llama.cpp adds BOS to a SentencePiece vocabulary by default
    else:
        if pre not in BYTE_LEVEL_SPLITS:
            refuse("tokenizer.ggml.pre", "unknown byte-level pre-tokenizer; supported: "
                                         + ", ".join(sorted(BYTE_LEVEL_SPLITS)))
        if meta.get("tokenizer.ggml.add_space_prefix"):
            refuse("tokenizer.ggml.add_space_prefix", "a prefix space is not supported for a "
                                                      "byte-level vocabulary")
        spell = _bytes_to_unicode()
        alphabet = set(spell.values())
        pieces = [t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))
                  for t in tokens]
        vocab = {t: i for i, t in enumerate(pieces)}
        merges = meta.get("tokenizer.ggml.merges")
        if not merges:
            refuse("tokenizer.ggml.merges", "a byte-level vocabulary needs its merges")
        try:
            tok = Tokenizer(BPE(vocab=vocab, merges=_split_merges(merges, refuse), dropout=None,
                                continuing_subword_prefix="", end_of_word_suffix="",
                                fuse_unk=False))
        except Exception as e:  # tokenizers' own errors (a merge of unknown pieces)
            refuse("tokenizer.ggml.merges", f"the merges do not fit the vocabulary ({e})")
        split = BYTE_LEVEL_SPLITS[pre]
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        elif split is _DIGITS_THEN_GPT2:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        default_bos = False

    # Control tokens stay whole and are special; user-defined ones stay whole and are not.
    # (A byte-level vocabulary's "control" token spelled outside the byte alphabet is a
    # llama.cpp mislabel, and is left alone, as transformers leaves it.)
    control = [t for t, k in zip(tokens, types) if k == _CONTROL
               and (kind == "llama" or set(t) <= alphabet)]
    if control:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    known = tok.get_vocab()
    user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED and t in known]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    named = {}  # bos/eos/unk/pad -> token string
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("unk", "unknown_token_id"), ("pad", "padding_token_id")):
        i = meta.get(f"tokenizer.ggml.{key}")
        if i is None:
            continue
        if not 0 <= int(i) < len(tokens):
            refuse(f"tokenizer.ggml.{key}", f"token id outside the vocabulary of {len(tokens)}")
        named[name] = tokens[int(i)]
    # The named special tokens (and Gemma's <mask>, which its transformers class always
    # declares) are special added tokens even where the file did not mark them control.
    extra = list(named.values()) + (["<mask>"] if gemma and kind == "llama" else [])
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    missing = [t for t in dict.fromkeys(extra) if t not in added]
    if missing:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in missing])

    add_bos = _flag(meta, "tokenizer.ggml.add_bos_token", default_bos) and "bos" in named
    add_eos = _flag(meta, "tokenizer.ggml.add_eos_token", False) and "eos" in named
    single = ([f"{named['bos']}:0"] if add_bos else []) + ["$A:0"] + \
             ([f"{named['eos']}:0"] if add_eos else [])
    pair = single + ([f"{named['bos']}:1"] if add_bos else []) + ["$B:1"] + \
        ([f"{named['eos']}:1"] if add_eos else [])
    special = ([(named["bos"], tok.token_to_id(named["bos"]))] if add_bos else []) + \
              ([(named["eos"], tok.token_to_id(named["eos"]))] if add_eos else [])
    tok.post_processor = processors.TemplateProcessing(single=" ".join(single),
                                                       pair=" ".join(pair),
                                                       special_tokens=special)
    return tok
