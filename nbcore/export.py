"""Sharing a model: a checkpoint as safetensors plus a JSON config, and a Hugging Face folder that
`transformers` and lm-evaluation-harness load as it is, tokenizer included.

    export_model(model, "out/")            # model.safetensors + config.json (any arch)
    model = load_exported("out/")          # rebuilt with nbcore.model.build_model
    export_hf(model, "out_hf/", tok)       # any arch: transformers layout + tokenizer files
    export_checkpoint(run_or_ckpt, "out/")  # both, straight from a run's checkpoint (hf/ inside)

The nbcore layout holds weights only (no optimiser state) under the model's own parameter names,
and `config.json` = {"format": "nbcore-model", "model_config": the build_model arguments, ...}.

The Hugging Face folder, per arch:
- "llama3": transformers' own LlamaForCausalLM (config.json with LlamaConfig keys).
- "nanogpt": transformers' own GPT2LMHeadModel (Conv1D weights are our Linear weights transposed;
  a model built with bias=False gets zero biases, which GPT-2's layout always has; exact GELU).
- "gpt" (the arch the workbook trains): a self-contained modelling file, `modeling_nbcore_gpt.py`
  (a copy of nbcore/hf_gpt.py, torch + transformers only), named in config.json's `auto_map`:
  `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`. Same parameter names,
  same masks (sliding windows as configured, document masking at <|endoftext|> when the model
  has eot_id), same logits, for every switch.
- the tokenizer (`write_hf_tokenizer`): tokenizer.json in the `tokenizers` library's format,
  built from our merges (byte-level BPE, our split regex, <|endoftext|> as a special token), and
  tokenizer_config.json. `AutoTokenizer.from_pretrained(DIR)` then encodes as our tokenizer's
  `encode(text, allowed_special="all")`, except that by default (add_special_tokens=True) it puts
  <|endoftext|> first, as every training document and every scored item starts: the BOS that
  lm-evaluation-harness then adds on its own. (For a "gpt" folder pass trust_remote_code=True to
  AutoTokenizer too: transformers 5 reads config.json first, and would otherwise ask whether to
  run the modelling file; with trust_remote_code=False it falls back to a plain config, and works.)

Rotary embeddings (llama3): transformers rotates dimension i together with i + Dh/2
("rotate_half"); Meta's original Llama code rotates neighbours (2i, 2i+1) and its weights need a
permutation of the query/key rows to load in transformers. Our Rotary pairs i with i + Dh/2 like
transformers, so no permutation is needed; `rotary_layout` checks this on the model itself and
`export_hf_llama` permutes if a model ever pairs neighbours instead.
`transformers` is an optional extra (pip install -e '.[hf]'): exporting needs only safetensors.
"""
from pathlib import Path

import torch

from . import checkpoint, fileio

FORMAT = "nbcore-model"
FORMAT_VERSION = 1
_MACHINE_KEYS = ("device", "dtype", "compile")  # chosen again where the model is loaded


def _state_for_saving(model) -> dict:
    """The state dict as contiguous CPU tensors; a tensor shared under two names is stored once."""
    state, seen = {}, {}
    for name, t in checkpoint.unwrap(model).state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue  # tied weights (e.g. nanogpt's head = token embedding): the model re-ties on load
        seen[key] = name
        state[name] = t.detach().to("cpu").contiguous()
    return state


def _save_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    with fileio.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def export_model(model, out_dir, step=None, source=None, tokenizer=None) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.json` (nbcore layout). Returns out_dir.

    tokenizer: an optional reference kept in the config (e.g. {'tokenizer_dir': ..., 'name': ...}).
    """
    model = checkpoint.unwrap(model)
    out_dir = Path(out_dir)
    cfg = {k: v for k, v in model.config.items() if k not in _MACHINE_KEYS}
    if cfg.get("arch") == "gpt":  # kernel and FP8 head are the loading machine's choice
        cfg.update(attn_backend="auto", fp8_head=False)
    tensors = _state_for_saving(model)
    _save_safetensors(out_dir / "model.safetensors", tensors, {"format": "pt", "nbcore": FORMAT})
    fileio.write_json(out_dir / "config.json", {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model_config": cfg,
        "num_params": model.num_params(), "step": step, "source_checkpoint": None if source is None else str(source),
        "tokenizer": tokenizer, "tensors": sorted(tensors)})
    return out_dir


def load_exported(folder, device="cpu"):
    """Rebuild a model written by `export_model` (weights checked name by name)."""
    from safetensors.torch import load_file

    from .model import build_model

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no config.json: not an exported model folder")
    meta = fileio.read_json(folder / "config.json")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / 'config.json'} is not an nbcore export (format {meta.get('format')!r}); "
                         f"a Hugging Face export loads with transformers' from_pretrained instead")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{folder} was exported by a newer nbcore (format version {meta['format_version']})")
    model = build_model(**meta["model_config"], device=device)
    tensors = load_file(str(folder / "model.safetensors"), device=str(device))
    own = model.state_dict()
    missing = [k for k in own if k not in tensors and not _is_tied_copy(model, k, tensors)]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise ValueError(f"{folder / 'model.safetensors'} does not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def _is_tied_copy(model, name, tensors) -> bool:
    """True when `name` shares its storage with a parameter that is in `tensors` (tied weights)."""
    sd = model.state_dict()
    ptr = sd[name].untyped_storage().data_ptr()
    return any(k in tensors and sd[k].untyped_storage().data_ptr() == ptr for k in sd if k != name)


# ---------------------------------------------------------------- Hugging Face Llama
def rotary_layout(model) -> str:
    """'half' if the model's rotary pairs dim i with i + Dh/2 (transformers' rotate_half),
    'interleaved' if it pairs 2i with 2i+1 (Meta's original). Probed on the model itself."""
    rot = model.blocks[0].self_attn.rotary
    Dh = model.config["head_dim"]
    x = torch.zeros(1, 2, 1, Dh)  # (B, T, H, Dh): a unit vector on dim 0, at positions 0 and 1
    x[..., 0] = 1.0
    y = rot(x)[0, 1, 0]  # position 1 rotates dim 0 into its partner
    partner = int(y[1:].abs().argmax()) + 1
    if partner == Dh // 2:
        return "half"
    if partner == 1:
        return "interleaved"
    raise ValueError(f"cannot tell the rotary layout (dim 0 pairs with {partner})")


def interleaved_to_half(w: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Permute query/key projection rows from neighbour pairs (2i, 2i+1) to (i, i + Dh/2), per head.

    w: (heads·Dh, D) -> same shape. Row 2i of a head goes to row i, row 2i+1 to row i + Dh/2.
    """
    D = w.size(-1)
    return w.view(num_heads, head_dim // 2, 2, D).transpose(1, 2).reshape(num_heads * head_dim, D)


def hf_llama_config(model, bos_id=None, eos_id=None) -> dict:
    """LlamaConfig keys (as transformers writes config.json) for an arch='llama3' model."""
    c = model.config
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": c["vocab_size"], "hidden_size": c["model_dim"], "intermediate_size": c["ffn_dim"],
        "num_hidden_layers": c["num_layers"], "num_attention_heads": c["num_heads"],
        "num_key_value_heads": c["num_kv_heads"], "head_dim": c["head_dim"], "hidden_act": "silu",
        "max_position_embeddings": c["seq_len"], "rms_norm_eps": c["norm_eps"],
        "rope_theta": c["rope_theta"], "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": c["rope_theta"]},
        "attention_bias": c["bias"], "attention_dropout": 0.0, "mlp_bias": c["bias"],
        "tie_word_embeddings": c["tie_embeddings"], "initializer_range": 0.02, "pretraining_tp": 1,
        "use_cache": True, "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
    }


def export_hf_llama(model, out_dir, bos_id=None, eos_id=None) -> Path:
    """Write an arch='llama3' model as transformers' Llama: config.json + model.safetensors.

    bos_id / eos_id: the tokenizer's <|endoftext|> id (documents start with it in our shards).
    """
    model = checkpoint.unwrap(model)
    if model.config.get("arch") != "llama3":
        raise ValueError(f"the Hugging Face Llama layout is for arch='llama3' models, this one is "
                         f"{model.config.get('arch')!r}: use export_model() (safetensors + JSON config)")
    c = model.config
    state = {k: v.detach().to("cpu").float().contiguous() for k, v in model.hf_state_dict().items()}
    if c["tie_embeddings"]:
        state.pop("lm_head.weight", None)  # transformers ties it to model.embed_tokens.weight
    if rotary_layout(model) == "interleaved":
        for k in list(state):
            if k.endswith("self_attn.q_proj.weight"):
                state[k] = interleaved_to_half(state[k], c["num_heads"], c["head_dim"])
            elif k.endswith("self_attn.k_proj.weight"):
                state[k] = interleaved_to_half(state[k], c["num_kv_heads"], c["head_dim"])
    out_dir = Path(out_dir)
    _save_safetensors(out_dir / "model.safetensors", state, {"format": "pt"})
    fileio.write_json(out_dir / "config.json", hf_llama_config(model, bos_id, eos_id))
    _write_generation_config(out_dir, bos_id, eos_id)
    return out_dir


# ---------------------------------------------------------------- Hugging Face tokenizer
def byte_chars() -> list:
    """GPT-2's table byte -> printable character: byte-level BPE vocabularies (tokenizer.json)
    write each token's bytes through it (printable Latin-1 bytes as themselves, others shifted
    to 256 and up)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, shifted = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


def hf_tokenizer_json(tok, add_bos: bool = True) -> dict:
    """tokenizer.json (the `tokenizers` library's format) for an nbcore BPETokenizer.

    Model: BPE over bytes with our merges in order (merge i = rank i) and `ignore_merges`
    (a chunk that is a whole token stays one, as tiktoken does). Pre-tokenizer: our split regex,
    then bytes -> characters. Special tokens: ours, never split. Post-processor: <|endoftext|>
    first when add_special_tokens=True (add_bos)."""
    from .tokenizer import EOT, BPETokenizer

    if not isinstance(tok, BPETokenizer):
        raise TypeError(f"Hugging Face tokenizer files are written for nbcore BPE tokenizers, not {type(tok).__name__}; "
                        f"a tiktoken encoding (e.g. GPT-2's) is on the hub as the 'gpt2' tokenizer")
    chars = byte_chars()
    name = lambda i: "".join(chars[b] for b in tok.token_bytes(i))
    vocab = {name(i): i for i in range(tok.vocab_size)}
    if len(vocab) != tok.vocab_size:
        raise ValueError("two tokens have the same bytes; the tokenizer cannot be written as BPE")
    merges = [[name(a), name(b)] for a, b in tok.merges]
    specials = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                 "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    post = None
    if add_bos:
        eot = tok.eot_id
        bos = {"SpecialToken": {"id": EOT, "type_id": 0}}
        post = {"type": "TemplateProcessing",
                "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOT, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {EOT: {"id": EOT, "ids": [eot], "tokens": [EOT]}}}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def write_hf_tokenizer(tok, out_dir, model_max_length=None, add_bos: bool = True) -> list:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir (atomically).

    <|endoftext|> is BOS, EOS and padding (GPT-2's convention: one special token).
    """
    from .tokenizer import EOT

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "clean_up_tokenization_spaces": False,
              "model_max_length": int(model_max_length or 10**30), "add_bos_token": bool(add_bos),
              "nbcore_tokenizer": {"name": tok.name, "merges_hash": tok.merges_hash}}
    return [fileio.write_json(out_dir / "tokenizer.json", hf_tokenizer_json(tok, add_bos)),
            fileio.write_json(out_dir / "tokenizer_config.json", config),
            fileio.write_json(out_dir / "special_tokens_map.json", special)]


# ---------------------------------------------------------------- Hugging Face: gpt and nanogpt
HF_GPT_FILE = "modeling_nbcore_gpt.py"


def hf_gpt_config(model, bos_id=None, eos_id=None) -> dict:
    """config.json for arch='gpt': NbcoreGPTConfig's keys and the auto_map to the modelling file."""
    c = model.config
    mod = HF_GPT_FILE.removesuffix(".py")
    return {
        "architectures": ["NbcoreGPTForCausalLM"], "model_type": "nbcore_gpt",
        "auto_map": {"AutoConfig": f"{mod}.NbcoreGPTConfig", "AutoModelForCausalLM": f"{mod}.NbcoreGPTForCausalLM"},
        "vocab_size": c["vocab_size"], "num_layers": c["num_layers"], "num_heads": c["num_heads"],
        "head_dim": c["head_dim"], "model_dim": c["model_dim"], "seq_len": c["seq_len"],
        "mlp_ratio": c["mlp_ratio"], "mlp_act": c["mlp_act"], "x0_mix": c["x0_mix"], "unet_skips": c["unet_skips"],
        "value_embeds": c["value_embeds"], "qk_norm": c["qk_norm"], "rotary_fraction": c["rotary_fraction"],
        "sliding_window": c["sliding_window"], "window_long": c["window_long"],
        "window_short": model.windows()[1] if c["sliding_window"] else c["window_short"],
        "softcap": c["softcap"], "tie_embeddings": c["tie_embeddings"],
        "padded_vocab": c["vocab_size"] if model.head is None else model.head.weight.size(0), "eot_id": c["eot_id"],
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32", "use_cache": False,
    }


def hf_gpt2_config(model, bos_id=None, eos_id=None) -> dict:
    """GPT2Config keys (config.json) for an arch='nanogpt' model."""
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c["vocab_size"],
        "n_positions": c["seq_len"], "n_ctx": c["seq_len"], "n_embd": c["model_dim"], "n_layer": c["num_layers"],
        "n_head": c["num_heads"], "n_inner": int(c["mlp_ratio"] * c["model_dim"]),
        "activation_function": "gelu",  # exact (erf) GELU, as F.gelu; GPT-2's own is "gelu_new" (tanh)
        "resid_pdrop": c["dropout"], "embd_pdrop": c["dropout"], "attn_pdrop": c["dropout"],
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": c["tie_embeddings"], "bos_token_id": bos_id, "eos_token_id": eos_id,
        "torch_dtype": "float32", "use_cache": True,
    }


def gpt2_state_dict(model) -> dict:
    """An arch='nanogpt' model's weights under GPT2LMHeadModel's names: Conv1D weights are (in, out),
    the transpose of a Linear's; missing biases (bias=False) are zeros."""
    D = model.config["model_dim"]
    zeros = lambda n: torch.zeros(n)
    f = lambda t: t.detach().to("cpu").float().contiguous()
    out = {"transformer.wte.weight": f(model.wte.weight), "transformer.wpe.weight": f(model.wpe.weight)}
    for i, b in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        for ours, theirs, transpose in ((b.ln_1, "ln_1", False), (b.c_attn, "attn.c_attn", True),
                                        (b.c_proj, "attn.c_proj", True), (b.ln_2, "ln_2", False),
                                        (b.c_fc, "mlp.c_fc", True), (b.mlp_proj, "mlp.c_proj", True)):
            w = f(ours.weight)
            out[p + theirs + ".weight"] = w.t().contiguous() if transpose else w
            n = ours.weight.size(0)
            out[p + theirs + ".bias"] = f(ours.bias) if ours.bias is not None else zeros(n)
    out["transformer.ln_f.weight"] = f(model.ln_f.weight)
    out["transformer.ln_f.bias"] = f(model.ln_f.bias) if model.ln_f.bias is not None else zeros(D)
    if model.lm_head is not None:
        out["lm_head.weight"] = f(model.lm_head.weight)
    return out


def export_hf(model, out_dir, tokenizer=None, bos_id=None, eos_id=None) -> Path:
    """Write `model` (any arch) as a Hugging Face folder: config.json, model.safetensors,
    generation_config.json, for 'gpt' the modelling file, and with `tokenizer` (an nbcore
    BPETokenizer) the tokenizer files. bos_id / eos_id default to the tokenizer's <|endoftext|>."""
    model = checkpoint.unwrap(model)
    arch = model.config.get("arch")
    if tokenizer is not None:
        bos_id = tokenizer.eot_id if bos_id is None else bos_id
        eos_id = tokenizer.eot_id if eos_id is None else eos_id
    out_dir = Path(out_dir)
    if arch == "llama3":
        export_hf_llama(model, out_dir, bos_id, eos_id)
    elif arch == "nanogpt":
        _save_safetensors(out_dir / "model.safetensors", gpt2_state_dict(model), {"format": "pt"})
        fileio.write_json(out_dir / "config.json", hf_gpt2_config(model, bos_id, eos_id))
        _write_generation_config(out_dir, bos_id, eos_id)
    elif arch == "gpt":
        _save_safetensors(out_dir / "model.safetensors", {k: v.float() for k, v in _state_for_saving(model).items()},
                          {"format": "pt"})
        fileio.write_json(out_dir / "config.json", hf_gpt_config(model, bos_id, eos_id))
        fileio.write_text(out_dir / HF_GPT_FILE, Path(__file__).with_name("hf_gpt.py").read_text(encoding="utf-8"))
        _write_generation_config(out_dir, bos_id, eos_id)
    else:
        raise ValueError(f"no Hugging Face layout for arch={arch!r}")
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, out_dir, model_max_length=model.config["seq_len"])
    return out_dir


def _write_generation_config(out_dir, bos_id, eos_id):
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": True, "temperature": 0.8, "top_k": 50}
    fileio.write_json(Path(out_dir) / "generation_config.json", {k: v for k, v in gen.items() if v is not None})


# ---------------------------------------------------------------- from a run
def export_checkpoint(run_or_checkpoint, out_dir=None, hf: bool | None = None, device="cpu") -> dict:
    """Export a run's checkpoint: {'nbcore': folder, 'hf': folder or None}.

    out_dir defaults to <run>/export/step_NNNNNN; the Hugging Face folder (every arch, with the
    tokenizer files when the run's tokenizer is an nbcore BPE; hf=False skips it) goes to
    <out_dir>/hf.
    """
    from . import evaluate
    from .tokenizer import BPETokenizer

    loaded = evaluate.load_run(run_or_checkpoint, device=device)
    out_dir = Path(out_dir) if out_dir is not None else loaded.run_dir / "export" / loaded.checkpoint.stem
    tok = loaded.tokenizer
    tok_ref = {"name": getattr(tok, "name", None), "n_vocab": tok.n_vocab, "eot_id": tok.eot_id,
               "merges_hash": getattr(tok, "merges_hash", None)}
    out = {"nbcore": export_model(loaded.model, out_dir, step=loaded.step, source=loaded.checkpoint, tokenizer=tok_ref),
           "hf": None}
    if hf is not False:
        hf_tok = tok if isinstance(tok, BPETokenizer) else None
        out["hf"] = export_hf(loaded.model, out_dir / "hf", hf_tok, bos_id=tok.eot_id, eos_id=tok.eot_id)
    return out


__all__ = ["export_model", "load_exported", "rotary_layout", "interleaved_to_half", "hf_llama_config",
           "export_hf_llama", "byte_chars", "hf_tokenizer_json", "write_hf_tokenizer", "HF_GPT_FILE", "hf_gpt_config",
           "hf_gpt2_config", "gpt2_state_dict", "export_hf", "export_checkpoint"]
