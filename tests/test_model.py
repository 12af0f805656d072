"""nbcore.model: shapes, masks, caching, counts, optimiser groups, training, errors (CPU, tiny)."""
import json
import logging

import pytest
import torch

from nbcore import attention
from nbcore.model import (ARCH_DEFAULTS, GPT_DEFAULTS, SIZE_PRESETS, ModelConfigError, build_model, from_config,
                          long_window_layers, value_embed_layers, value_embeds_for)

V, L, H, D, T = 61, 3, 2, 32, 32
EOT = 0
ARCH_KW = {  # small configs that exercise each arch's particulars
    "gpt": dict(eot_id=EOT, window_long=16, window_short=8, zero_init=False),
    "nanogpt": dict(),
    "llama3": dict(num_kv_heads=1),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and lose a lot on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(arch, **kw):
    return build_model(arch, V, kw.pop("num_layers", L), H, D, kw.pop("seq_len", T), device="cpu",
                       **{**ARCH_KW[arch], **kw})


def tokens(B=2, T_=T, seed=0, low=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, V, (B, T_), generator=g)


# ---------------------------------------------------------------------------------------------
# shapes and the forward contract

@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_forward_contract(arch):
    m = tiny(arch)
    idx, tgt = tokens(), tokens(seed=1)
    logits = m(idx)
    assert logits.shape == (2, T, V) and logits.dtype == torch.float32
    loss = m(idx, tgt)
    assert loss.dim() == 0
    per_tok = m(idx, tgt, reduction="none")
    assert per_tok.shape == (2, T)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, V), tgt.view(-1), reduction="none").view(2, T)
    torch.testing.assert_close(per_tok, ref)
    torch.testing.assert_close(loss, ref.mean())
    tgt[:, :10] = -100  # ignored targets: zero loss there, mean over the rest
    per_tok = m(idx, tgt, reduction="none")
    assert (per_tok[:, :10] == 0).all()
    torch.testing.assert_close(m(idx, tgt), per_tok[:, 10:].mean())
    json.dumps(m.config)  # recorded in runs
    assert set(ARCH_DEFAULTS[arch]) <= set(m.config)


def test_gpt_shapes_at_every_stage():
    m = tiny("gpt", num_layers=4)
    B = 2
    seen = {}
    hook = lambda name: (lambda mod, inp, out: seen.__setitem__(name, tuple(out.shape)))
    m.embed.register_forward_hook(hook("embed"))
    for i, e in enumerate(m.value_embeds):
        e.register_forward_hook(hook(f"ve{i}"))
    for i, b in enumerate(m.blocks):
        b.register_forward_hook(hook(f"block{i}"))
        b.attn.qkv.register_forward_hook(hook(f"qkv{i}"))
        b.mlp.fc.register_forward_hook(hook(f"fc{i}"))
    m.head.register_forward_hook(hook("head"))
    logits = m(tokens(B))
    assert seen["embed"] == (B, T, D)
    assert [seen[f"ve{i}"] for i in range(m.config["value_embeds"])] == [(B, T, D)]  # H·Dh = D here
    for i in range(4):
        assert seen[f"block{i}"] == (B, T, D)
        assert seen[f"qkv{i}"] == (B, T, 3 * D)
        assert seen[f"fc{i}"] == (B, T, 4 * D)
    assert seen["head"] == (B, T, 128)  # padded to vocab_multiple; logits cut back to V
    assert logits.shape == (B, T, V)


def test_depth_rules():
    assert long_window_layers(12) == [i in (0, 4, 7, 11) for i in range(12)]  # the speedrun's pattern
    assert long_window_layers(1) == [True]
    assert value_embed_layers(12, 3) == [0, 1, 2] + [None] * 6 + [0, 1, 2]
    assert value_embed_layers(5, 2) == [0, 1, None, 0, 1]
    assert [value_embeds_for(n) for n in (1, 2, 3, 4, 8, 12, 24)] == [0, 1, 1, 1, 2, 3, 3]
    assert build_model("gpt", V, 8, H, D, T, device="meta").config["value_embeds"] == 2
    assert build_model("gpt", V, 5, H, D, T, device="meta", value_embeds=2).config["value_embeds"] == 2


def test_unet_skips_for_odd_depth():
    m = tiny("gpt", num_layers=5)
    assert m.skip_weights.shape == (2,)  # layers 3, 4 receive the outputs of layers 1, 0
    m.skip_weights.data.zero_()
    a = m(tokens())
    m.skip_weights.data.fill_(1.0)
    assert not torch.allclose(a, m(tokens()))


# ---------------------------------------------------------------------------------------------
# masks: causality, documents, windows

@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_causality(arch):
    m = tiny(arch)
    idx = tokens()
    a = m(idx)
    t = 20
    idx2 = idx.clone()
    idx2[:, t] = (idx2[:, t] % (V - 1)) + 1
    b = m(idx2)
    torch.testing.assert_close(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_document_masking():
    m = tiny("gpt", window_long=T, window_short=T)
    idx = tokens()
    idx[:, 12] = EOT  # document 2 starts at position 12
    a = m(idx)
    idx2 = idx.clone()
    idx2[:, 3:12] = tokens(2, 9, seed=5)  # change only document 1
    b = m(idx2)
    torch.testing.assert_close(a[:, 12:], b[:, 12:])  # document 2 never saw document 1
    assert not torch.allclose(a[:, :12], b[:, :12])
    mask = attention.dense_mask(attention.mask_rule(attention.document_ids(idx, EOT)), 2, T, T)
    assert not mask[:, 0, 12:, :12].any()  # nothing across the boundary
    assert torch.equal(mask[:, 0, 12:, 12:], torch.ones(2, T - 12, T - 12, dtype=torch.bool).tril())


def test_rows_without_a_boundary_use_the_causal_kernel():
    """A batch where no row crosses a document boundary (an eot only at position 0, or none)
    takes SDPA's causal path, with the same outputs as the document mask gives."""
    m = tiny("gpt", window_long=T, window_short=T, zero_init=False)
    idx = tokens()
    idx[:, 0] = EOT
    assert m.layer_masks(idx) == ["causal"] * m.num_layers
    dense = attention.dense_mask(attention.mask_rule(attention.document_ids(idx, EOT)), 2, T, T)
    with torch.no_grad():
        want = m(idx)
        m.layer_masks = lambda idx, window=None, cache=None: [dense] * m.num_layers
        torch.testing.assert_close(m(idx), want)
    idx[1, 7] = EOT  # a boundary inside a row: the document mask again
    assert all(torch.is_tensor(mk) for mk in tiny("gpt", window_long=T, window_short=T).layer_masks(idx))


def test_sliding_window():
    m = tiny("gpt", num_layers=1)  # one layer: influence reaches exactly `window` positions
    idx = tokens()
    for w in (4, 8):
        a = m(idx, window=w)
        idx2 = idx.clone()
        idx2[:, 5] = (idx2[:, 5] % (V - 1)) + 1
        b = m(idx2, window=w)
        torch.testing.assert_close(a[:, 5 + w:], b[:, 5 + w:])  # beyond the window: untouched
        assert not torch.allclose(a[:, 5 + w - 1], b[:, 5 + w - 1])  # last position inside it
    mask = attention.dense_mask(attention.mask_rule(None, 6), 1, T, T)[0, 0]
    q, k = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(mask, (k <= q) & (q - k < 6))


def test_long_and_short_layers_get_their_windows():
    m = tiny("gpt", num_layers=4, eot_id=None, window_long=16, window_short=4)
    masks = m.layer_masks(tokens())
    sizes = [int(mk[0, 0, -1].sum()) for mk in masks]  # keys the last query sees
    assert sizes == [16 if is_long else 4 for is_long in long_window_layers(4)]
    assert m.windows(8) == (8, 2)  # a grown-in window keeps the short:long ratio


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_matches_sdpa():
    kw = dict(eot_id=EOT, window_long=16, window_short=8, zero_init=False)
    ms = build_model("gpt", V, 2, H, D, 64, device="cpu", attn_backend="sdpa", **kw)
    mf = build_model("gpt", V, 2, H, D, 64, device="cpu", attn_backend="flex", **kw)
    mf.load_state_dict(ms.state_dict())
    idx = tokens(2, 64)
    idx[0, 20] = idx[1, 40] = EOT
    with torch.no_grad():
        torch.testing.assert_close(mf(idx), ms(idx), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="attn_backend='sdpa'"):
        mf(idx, idx)  # FlexAttention cannot train on CPU: said clearly


# ---------------------------------------------------------------------------------------------
# generation

@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_kv_cache_generate_equals_recompute(arch):
    m = tiny(arch, seq_len=24)
    prompt = tokens(2, 5)
    prompt[1, 2] = EOT
    out = m.generate(prompt, 30, temperature=0)  # runs past seq_len: exercises cropping too
    ref = prompt
    for _ in range(30):
        nxt = m(ref[:, -24:])[:, -1].argmax(-1, keepdim=True)
        ref = torch.cat([ref, nxt], 1)
    assert out.shape == (2, 35)
    assert torch.equal(out, ref)


def test_generate_sampling_is_reproducible():
    m = tiny("gpt")
    p = tokens(1, 4)
    a = m.generate(p, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    b = m.generate(p, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a[:, :4], p)
    assert m.training  # mode restored


# ---------------------------------------------------------------------------------------------
# counts

def test_reference_parameter_counts_on_meta():
    gpt2 = build_model("nanogpt", 50257, 12, 12, 768, 1024, device="meta")
    assert gpt2.num_params() == 124_439_808
    assert gpt2.num_params(embeddings=False) == 124_439_808 - 1024 * 768  # nanoGPT's 123.65M
    llama = build_model("llama3", 128256, 16, 32, 2048, 2048, device="meta", num_kv_heads=8, ffn_dim=8192,
                        tie_embeddings=True)
    assert llama.num_params() == 1_235_814_400
    assert next(llama.parameters()).is_meta


def test_flops_per_token():
    gpt2 = build_model("nanogpt", 50257, 12, 12, 768, 1024, device="meta")
    N = 124_439_808 - 1024 * 768
    assert gpt2.flops_per_token() == 6 * N + 12 * 12 * 768 * 1024  # nanoGPT's estimate_mfu formula
    m = build_model("gpt", 1000, 4, 2, 64, 256, device="meta", window_long=128, window_short=32)
    N = m.num_params(embeddings=False)
    ctx = [128 if is_long else 32 for is_long in long_window_layers(4)]
    assert m.flops_per_token() == 6 * N + 12 * 64 * sum(ctx)
    assert m.flops_per_token(window=256) > m.flops_per_token()


def test_size_presets_build():
    for name, kw in SIZE_PRESETS.items():
        m = build_model("gpt", 50257, seq_len=1024, device="meta", **kw)
        assert m.num_params() > 0
    counts = {n: build_model("gpt", 50257, seq_len=1024, device="meta", **SIZE_PRESETS[n]).num_params() / 1e6
              for n in ("XS", "S", "M")}
    for name, lab in (("XS", 57.8), ("S", 117.7), ("M", 342.5)):  # the original lab's sizes
        assert abs(counts[name] - lab) / lab < 0.01, counts


# ---------------------------------------------------------------------------------------------
# optimiser groups

@pytest.mark.parametrize("arch,kw", [("gpt", {}), ("gpt", {"tie_embeddings": True, "unet_skips": False}),
                                     ("nanogpt", {}), ("llama3", {"tie_embeddings": False, "bias": True})])
def test_configure_optimizers_partitions_parameters(arch, kw):
    m = tiny(arch, **kw)
    groups = m.configure_optimizers()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    names = {g["name"]: g for g in groups}
    if arch == "gpt":
        assert set(names) <= {"hidden_matrices", "embed", "head", "scalars"}
        assert all(p.dim() == 2 for p in names["hidden_matrices"]["params"])
        assert names["hidden_matrices"]["optimizer"] == "muon"
        assert all(p.dim() <= 1 for p in names["scalars"]["params"])
        assert m.embed.weight in names["embed"]["params"]
        assert ("head" in names) == (not kw.get("tie_embeddings"))
    else:
        assert set(names) == {"decay", "no_decay"}
        assert all(g["optimizer"] == "adamw" for g in groups)
        assert all(p.dim() >= 2 for p in names["decay"]["params"])


# ---------------------------------------------------------------------------------------------
# training

def train_steps(m, steps=25, lr=3e-3):
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    idx = tokens(4, T, seed=3)
    x, y = idx[:, :-1], idx[:, 1:]
    losses = []
    for _ in range(steps):
        loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_each_arch_trains(arch):
    losses = train_steps(tiny(arch))
    assert losses[-1] < losses[0] - 0.5, losses


def test_every_switch_off_trains():
    off = dict(x0_mix=False, unet_skips=False, value_embeds=0, qk_norm=False, rotary_fraction=0.0,
               sliding_window=False, softcap=0.0, zero_init=False, mlp_act="gelu", eot_id=None)
    m = tiny("gpt", **off)
    assert all(m.config[k] == v for k, v in off.items())
    assert m.skip_weights is None and len(m.value_embeds) == 0 and m.blocks[0].x0_mix is None
    losses = train_steps(m)
    assert losses[-1] < losses[0] - 0.5, losses


def test_default_gpt_starts_at_uniform_loss():
    m = build_model("gpt", V, L, H, D, T, device="cpu")  # zero-initialised head: logits all 0
    assert m(tokens(), tokens(seed=1)).item() == pytest.approx(torch.log(torch.tensor(float(V))).item())


# ---------------------------------------------------------------------------------------------
# config, seeds, devices

def test_seed_and_from_config_round_trip():
    a = tiny("gpt", seed=7)
    b = from_config(json.loads(json.dumps(a.config)))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    cuda_record = {**a.config, "device": "cuda", "dtype": "bfloat16", "attn_backend": "flex", "compile": True}
    d = from_config(cuda_record, device="cpu")  # a run trained on a GPU, rebuilt here
    assert d.config == a.config
    c = tiny("gpt", seed=8)
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_cpu_fallbacks_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="nbcore.model"):
        m = build_model("gpt", V, 1, H, D, T, fp8_head=True)  # device=None on a CPU-only machine
    assert m.config["device"] == "cpu" and m.config["dtype"] == "float32"
    assert m.config["fp8_head"] is False and m.config["attn_backend"] == "sdpa" and m.config["compile"] is False
    text = caplog.text
    assert "no CUDA device" in text and "fp8_head needs a Hopper" in text


@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_bfloat16_compute_path(arch):
    # the CUDA precision recipe (float32 weights, bf16 autocast) exercised on the CPU
    m = tiny(arch, dtype="bfloat16")
    ref = tiny(arch)
    assert m.config["dtype"] == "bfloat16" and next(m.parameters()).dtype == torch.float32
    idx = tokens()
    loss = m(idx, idx)
    loss.backward()
    assert loss.dtype == torch.float32 and m(idx).dtype == torch.float32
    assert abs(loss.item() - ref(idx, idx).item()) < 0.05
    assert m.generate(idx[:, :4], 3, temperature=0).shape == (2, 7)


def test_llama3_hf_state_dict_names():
    m = tiny("llama3", num_layers=2)
    sd = m.hf_state_dict()
    want = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{n}.weight" for i in range(2) for n in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(sd) == want
    assert sd["model.layers.1.self_attn.k_proj.weight"].shape == (1 * D // H, D)  # one KV head
    assert "lm_head.weight" in tiny("llama3", tie_embeddings=False).hf_state_dict()  # tied: no copy


def test_fp8_linear_matches_matmul_within_fp8_precision():
    # the FP8 head's matmul (used on Hopper GPUs only); torch's CPU _scaled_mm lets us check the math
    from nbcore.model import fp8_linear
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, generator=g, requires_grad=True)
    w = (torch.randn(128, 64, generator=g) * 0.1).requires_grad_()
    y = fp8_linear(x, w)
    ref = x @ w.T
    assert y.shape == (2, 16, 128) and y.dtype == torch.bfloat16
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()  # e4m3 keeps 3 mantissa bits
    y.float().sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand_as(x), atol=0.05, rtol=0.02)
    torch.testing.assert_close(w.grad, x.detach().reshape(-1, 64).sum(0).expand_as(w), atol=0.3, rtol=0.02)


# ---------------------------------------------------------------------------------------------
# bad input

def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ModelConfigError, match="unknown arch 'gpt3'; choose one of gpt, nanogpt, llama3"):
        build_model("gpt3", V, L, H, D, T, device="meta")
    with pytest.raises(ModelConfigError, match=r"model_dim \(30\) must be divisible by num_heads \(4\)"):
        build_model("gpt", V, L, 4, 30, T, device="meta")
    with pytest.raises(ModelConfigError, match=r"unknown argument\(s\) 'x0_mixing'.*valid ones: .*x0_mix"):
        build_model("gpt", V, L, H, D, T, device="meta", x0_mixing=False)
    with pytest.raises(ModelConfigError, match="'eot_id'.*arch='nanogpt'"):
        build_model("nanogpt", V, L, H, D, T, device="meta", eot_id=0)
    with pytest.raises(ModelConfigError, match="multiple of num_kv_heads"):
        build_model("llama3", V, L, 4, D, T, device="meta", num_kv_heads=3)
    with pytest.raises(ModelConfigError, match="value_embeds must be between 0 and"):
        build_model("gpt", V, 4, H, D, T, device="meta", value_embeds=3)
    with pytest.raises(ModelConfigError, match="mlp_act"):
        build_model("gpt", V, L, H, D, T, device="meta", mlp_act="swish")
    with pytest.raises(ModelConfigError, match="num_layers must be a positive int"):
        build_model("gpt", V, 0, H, D, T, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ModelConfigError, match="no CUDA device; pass device=None"):
            build_model("gpt", V, L, H, D, T, device="cuda")
    m = tiny("nanogpt")
    with pytest.raises(ValueError, match="exceeds the model's seq_len=32"):
        m(tokens(1, T + 1))
    with pytest.raises(ValueError, match=r"idx must be a \(B, T\) int64 tensor"):
        m(tokens().float())
    with pytest.raises(ValueError, match="targets must have idx's shape"):
        m(tokens(), tokens()[:, :-1])


def test_all_switch_names_documented():
    assert {"x0_mix", "unet_skips", "value_embeds", "qk_norm", "rotary_fraction", "sliding_window",
            "window_long", "window_short", "softcap", "zero_init", "mlp_act", "fp8_head", "attn_backend",
            "compile", "eot_id", "head_dim", "mlp_ratio", "tie_embeddings"} <= set(GPT_DEFAULTS)
