"""nbcore.export: safetensors + JSON round trips for every arch, and the Hugging Face Llama layout
(loaded with transformers' LlamaForCausalLM when transformers is installed: the same logits)."""
import json

import pytest
import torch

from nbcore import export
from tests.test_evaluate import make_run, make_tokenizer, tiny_model


def _jiggle(model, seed=0):
    """Random values in every parameter (norm gains and biases too), so nothing is trivially 1 or 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_export_round_trip_gives_identical_logits(tmp_path, arch):
    model = _jiggle(tiny_model(arch, 321))
    out = export.export_model(model, tmp_path / arch, step=12, tokenizer={"name": "t"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "nbcore-model" and meta["step"] == 12 and meta["model_config"]["arch"] == arch
    assert "device" not in meta["model_config"] and meta["num_params"] == model.num_params()
    back = export.load_exported(out)
    x = torch.randint(0, 321, (2, 20))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert back.num_params() == model.num_params()  # tied weights stay tied (nanogpt, llama3)


def test_load_exported_rejects_foreign_or_mismatched_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export.load_exported(tmp_path)
    out = export.export_model(tiny_model("nanogpt", 321), tmp_path / "a")
    meta = json.loads((out / "config.json").read_text())
    meta["model_config"]["num_layers"] = 3
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit its config"):
        export.load_exported(out)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not an nbcore export"):
        export.load_exported(out)


def test_export_checkpoint_from_a_run_folder(tmp_path):
    make_tokenizer(tmp_path / "tok")
    make_run(tmp_path / "run", tmp_path / "tok", arch="llama3", step=4)
    out = export.export_checkpoint(tmp_path / "run")
    assert out["nbcore"] == tmp_path / "run" / "export" / "step_000004"
    assert (out["hf"] / "config.json").exists() and (out["hf"] / "model.safetensors").exists()
    cfg = json.loads((out["hf"] / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["bos_token_id"] == cfg["eos_token_id"] == 320
    assert (out["hf"] / "tokenizer.json").exists() and (out["hf"] / "tokenizer_config.json").exists()
    make_run(tmp_path / "run_gpt", tmp_path / "tok", arch="gpt", step=2)
    hf = export.export_checkpoint(tmp_path / "run_gpt")["hf"]  # every arch has a Hugging Face layout now
    assert json.loads((hf / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"].startswith("modeling_")
    assert (hf / export.HF_GPT_FILE).exists()
    assert export.export_checkpoint(tmp_path / "run_gpt", tmp_path / "x", hf=False)["hf"] is None


def test_our_rotary_pairs_like_transformers():
    assert export.rotary_layout(tiny_model("llama3", 321)) == "half"


def test_interleaved_to_half_keeps_attention_scores():
    """Meta's neighbour-paired rotary on W's projections == half-paired rotary on permuted W's."""
    H, Dh, D, T = 2, 8, 16, 5
    g = torch.Generator().manual_seed(0)
    wq, wk, x = torch.randn(H * Dh, D, generator=g), torch.randn(H * Dh, D, generator=g), torch.randn(T, D, generator=g)
    freqs = 1.0 / 100 ** (torch.arange(Dh // 2) * 2 / Dh)
    ang = torch.arange(T)[:, None] * freqs  # (T, Dh/2)
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]

    def rope_interleaved(t):  # (T, H, Dh), pairs (2i, 2i+1)
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)

    def rope_half(t):  # pairs (i, i + Dh/2)
        a, b = t.chunk(2, dim=-1)
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def scores(wq, wk, rope):
        q, k = rope((x @ wq.T).view(T, H, Dh)), rope((x @ wk.T).view(T, H, Dh))
        return torch.einsum("qhd,khd->hqk", q, k)

    want = scores(wq, wk, rope_interleaved)
    got = scores(export.interleaved_to_half(wq, H, Dh), export.interleaved_to_half(wk, H, Dh), rope_half)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scores(wq, wk, rope_half), want, atol=1e-3)  # unpermuted: wrong


def test_hf_export_refuses_other_archs(tmp_path):
    with pytest.raises(ValueError, match="arch='llama3'"):
        export.export_hf_llama(tiny_model("gpt", 321), tmp_path)


@pytest.mark.parametrize("tie,bias", [(True, False), (False, True)])
def test_transformers_loads_the_llama_export_with_the_same_logits(tmp_path, tie, bias):
    transformers = pytest.importorskip("transformers")
    model = _jiggle(tiny_model("llama3", 321, seq_len=64, tie_embeddings=tie, bias=bias, rope_theta=10000.0))
    out = export.export_hf_llama(model, tmp_path / "hf", bos_id=320, eos_id=320)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert hf.config.num_key_value_heads == 2 and hf.config.tie_word_embeddings == tie
    x = torch.randint(0, 321, (2, 40))
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # and the KV-cache paths agree on a greedy continuation
    with torch.no_grad():
        a = model.generate(x[:1, :8], 6, temperature=0.0)
        b = hf.generate(x[:1, :8], max_new_tokens=6, do_sample=False, pad_token_id=320, eos_token_id=None)
    assert a.tolist() == b.tolist()
