"""Sharing a model: a checkpoint as safetensors plus a JSON config, and Llama-3 models in the
Hugging Face `transformers` layout.

    export_model(model, "out/")            # model.safetensors + config.json (any arch)
    model = load_exported("out/")          # rebuilt with nbcore.model.build_model
    export_hf_llama(model, "out_hf/")      # arch="llama3" only: loads with LlamaForCausalLM
    export_checkpoint(run_or_ckpt, "out/", hf=True)   # the same, straight from a run's checkpoint

The nbcore layout holds weights only (no optimiser state) under the model's own parameter names,
and `config.json` = {"format": "nbcore-model", "model_config": the build_model arguments, ...}.

The Hugging Face layout is `config.json` (LlamaConfig keys) + `model.safetensors` under
LlamaForCausalLM's names. Rotary embeddings: transformers rotates dimension i together with
i + Dh/2 ("rotate_half"); Meta's original Llama code rotates neighbours (2i, 2i+1) and its
weights need a permutation of the query/key rows to load in transformers. Our Rotary pairs
i with i + Dh/2 like transformers, so no permutation is needed; `rotary_layout` checks this on
the model itself and `export_hf_llama` permutes if a model ever pairs neighbours instead.
`transformers` is an optional extra (pip install transformers): exporting needs only safetensors.
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
    gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": True, "temperature": 0.8, "top_k": 50}
    fileio.write_json(out_dir / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
    return out_dir


# ---------------------------------------------------------------- from a run
def export_checkpoint(run_or_checkpoint, out_dir=None, hf: bool | None = None, device="cpu") -> dict:
    """Export a run's checkpoint: {'nbcore': folder, 'hf': folder or None}.

    out_dir defaults to <run>/export/step_NNNNNN; the Hugging Face copy (llama3 only; hf=None
    means "when the arch allows it") goes to <out_dir>/hf.
    """
    from . import evaluate

    loaded = evaluate.load_run(run_or_checkpoint, device=device)
    out_dir = Path(out_dir) if out_dir is not None else loaded.run_dir / "export" / loaded.checkpoint.stem
    tok = loaded.tokenizer
    tok_ref = {"name": getattr(tok, "name", None), "n_vocab": tok.n_vocab, "eot_id": tok.eot_id,
               "merges_hash": getattr(tok, "merges_hash", None)}
    out = {"nbcore": export_model(loaded.model, out_dir, step=loaded.step, source=loaded.checkpoint, tokenizer=tok_ref),
           "hf": None}
    is_llama = loaded.model.config["arch"] == "llama3"
    if hf and not is_llama:
        raise ValueError(f"hf=True needs an arch='llama3' checkpoint, this one is {loaded.model.config['arch']!r}")
    if is_llama and hf is not False:
        out["hf"] = export_hf_llama(loaded.model, out_dir / "hf", bos_id=tok.eot_id, eos_id=tok.eot_id)
    return out


__all__ = ["export_model", "load_exported", "rotary_layout", "interleaved_to_half", "hf_llama_config",
           "export_hf_llama", "export_checkpoint"]
