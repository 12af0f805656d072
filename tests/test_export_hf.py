"""Hugging Face exports that load as they are: tokenizer.json built from our merges encodes as our
tokenizer; the gpt arch (remote code) and nanogpt (GPT2LMHeadModel) give our logits in transformers.
The transformers tests skip when it is not installed (the `hf` extra; `make test` installs it)."""
import json
import random

import pytest
import torch

from nbcore import export
from nbcore.tokenizer import GPT2_PATTERN, GPT4_PATTERN, train_bpe
from tests.test_evaluate import make_run, make_text, make_tokenizer, tiny_model
from tests.test_export import _jiggle

V = 321

UNICODE = ("Ünïcödé façade naïve café, smörgåsbord; Straße. 日本語のテキスト、中文文本。 Ελληνικά κείμενα, русский "
           "текст. emoji 😀🎉👍🏽 and ZWJ 👩‍💻; tabs\there,\u00a0nbsp, CRLF\r\nline, math ∑∫√ ≤ ≥ ≠.")


def _texts():
    """Varied text: words, unicode of several scripts, whitespace runs, digits, contractions, specials."""
    g = random.Random(7)
    pieces = UNICODE.split(" ") + make_text(30, seed=3).split(" ") + ["  ", "\n\n\n", "\t", "   \n ", "12345678",
                                                                      "3.14", "it's", "WE'LL", "<|endoftext|>"]
    out = ["", " ", "   leading", "trailing   ", "a  b   c    d", "\n\nx\n \n", "x<|endoftext|>y <|endoftext|>",
           "<|endoftext|>", UNICODE, make_text(5, seed=9)]
    for _ in range(60):
        out.append("".join(p + g.choice(["", " ", "  ", "\n", " \n", "\t"]) for p in g.choices(pieces, k=g.randint(1, 12))))
    return out


@pytest.fixture(scope="module")
def tokenizers_():
    corpus = [make_text(300, seed=1), UNICODE * 20, "a  b   c\n\n\t x 123 4567 " * 30]
    return {"gpt4": train_bpe(corpus, 600, pattern=GPT4_PATTERN, workers=1, name="t4"),
            "gpt2": train_bpe(corpus, 560, pattern=GPT2_PATTERN, workers=1, name="t2")}


@pytest.fixture(scope="module")
def transformers_():
    return pytest.importorskip("transformers")


def test_byte_table_and_tokenizer_json_without_transformers(tokenizers_):
    chars = export.byte_chars()
    assert len(set(chars)) == 256 and chars[ord("A")] == "A" and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"
    tok = tokenizers_["gpt4"]
    d = export.hf_tokenizer_json(tok)
    assert len(d["model"]["vocab"]) == tok.vocab_size and len(d["model"]["merges"]) == len(tok.merges)
    a, b = tok.merges[0]
    assert d["model"]["merges"][0] == ["".join(chars[x] for x in tok.token_bytes(i)) for i in (a, b)]
    assert d["added_tokens"][0]["id"] == tok.eot_id and d["added_tokens"][0]["special"]
    assert d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == tok.pattern
    with pytest.raises(TypeError, match="nbcore BPE"):
        export.hf_tokenizer_json(object())


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_auto_tokenizer_encodes_exactly_as_ours(tmp_path, tokenizers_, transformers_, pattern):
    tok = tokenizers_[pattern]
    export.write_hf_tokenizer(tok, tmp_path, model_max_length=64)
    hf = transformers_.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.bos_token_id == hf.eos_token_id == hf.pad_token_id == tok.eot_id and hf.model_max_length == 64
    for text in _texts():
        ours = tok.encode(text, allowed_special="all")
        assert hf(text, add_special_tokens=False)["input_ids"] == ours, repr(text)
        assert hf(text)["input_ids"] == [tok.eot_id] + ours, repr(text)  # BOS first, as our documents
        assert hf.decode(ours) == tok.decode(ours)


# ---------------------------------------------------------------- models
GPT_SWITCHES = {
    "defaults": {},
    "tied": {"tie_embeddings": True},
    "short windows": {"window_long": 16, "window_short": 5},
    "no windows, padded vocab": {"sliding_window": False, "vocab_multiple": 64},
    "plain": {"x0_mix": False, "unet_skips": False, "value_embeds": 0, "qk_norm": False, "rotary_fraction": 0.0,
              "softcap": 0.0, "mlp_act": "gelu"},
    "full rotary, Dh 12, no documents": {"rotary_fraction": 1.0, "head_dim": 12, "eot_id": None},
}


def gpt_model(seq_len=64, **kw):
    """4 layers: long and short window layers, a value embedding, U-net skips; random weights."""
    from nbcore.model import build_model

    kw = {"zero_init": False, "eot_id": V - 1, **kw}
    return _jiggle(build_model("gpt", V, 4, 4, 32, seq_len, device="cpu", **kw).eval())


def _ids(B=3, T=40, seed=0):
    """(B, T) ids with <|endoftext|> (V - 1) inside rows: document masking matters."""
    x = torch.randint(0, V - 1, (B, T), generator=torch.Generator().manual_seed(seed))
    x[0, 10], x[1, 0], x[1, 25] = V - 1, V - 1, V - 1
    return x


@pytest.mark.parametrize("name", list(GPT_SWITCHES))
def test_gpt_export_loads_with_remote_code_and_gives_our_logits(tmp_path, transformers_, name):
    model = gpt_model(**GPT_SWITCHES[name])
    out = export.export_hf(model, tmp_path)
    imports = [ln.split()[1] for ln in (out / export.HF_GPT_FILE).read_text().splitlines()
               if ln.startswith(("import ", "from "))]
    assert {m.split(".")[0] for m in imports} == {"torch", "transformers"}  # self-contained: no nbcore
    hf = transformers_.AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32)
    hf.eval()
    x = _ids()
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # left padding with an attention mask: the real tokens score as without padding
    pad = torch.cat([torch.zeros(1, 5, dtype=torch.long), x[2:3, :30]], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 30, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(hf(pad, attention_mask=mask).logits[:, 5:], model(x[2:3, :30]), rtol=1e-5, atol=1e-5)


def test_gpt_export_masks_documents_and_windows_like_ours(tmp_path, transformers_):
    """The test above would pass for masks that do nothing if they never mattered: they do."""
    model = gpt_model(window_long=16, window_short=5)
    hf = transformers_.AutoModelForCausalLM.from_pretrained(str(export.export_hf(model, tmp_path)),
                                                            trust_remote_code=True, dtype=torch.float32).eval()
    x = _ids()
    with torch.no_grad():
        masked = hf(x).logits
        hf.config.eot_id, hf.config.sliding_window = None, False
        plain = hf(x).logits
    assert (masked - plain)[:, 20:].abs().max() > 1e-2


def test_gpt_export_generates_as_ours(tmp_path, transformers_):
    model = gpt_model(seq_len=32)
    hf = transformers_.AutoModelForCausalLM.from_pretrained(str(export.export_hf(model, tmp_path)),
                                                            trust_remote_code=True, dtype=torch.float32).eval()
    x = _ids()[:1, :8]
    with torch.no_grad():  # past seq_len both crop the context to the last seq_len tokens
        a = model.generate(x, 30, temperature=0.0)
        b = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=30, do_sample=False,
                        pad_token_id=V - 1, eos_token_id=None)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("kw", [{}, {"bias": False, "tie_embeddings": False, "mlp_ratio": 2}])
def test_nanogpt_exports_as_gpt2(tmp_path, transformers_, kw):
    model = _jiggle(tiny_model("nanogpt", V, seq_len=64, **kw))
    out = export.export_hf(model, tmp_path)
    assert not (out / export.HF_GPT_FILE).exists()
    hf = transformers_.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)
        a = model.generate(x[:1, :8], 6, temperature=0.0)
        b = hf.generate(x[:1, :8], attention_mask=torch.ones_like(x[:1, :8]), max_new_tokens=6, do_sample=False,
                        pad_token_id=V - 1, eos_token_id=None)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("arch", ["gpt", "llama3"])
def test_export_checkpoint_writes_a_folder_transformers_loads_whole(tmp_path, transformers_, arch):
    """A run's checkpoint -> hf/: model and tokenizer load with the Auto classes, and score text as we do."""
    tok = make_tokenizer(tmp_path / "tok")
    model = make_run(tmp_path / "run", tmp_path / "tok", arch=arch, step=3)
    out = export.export_checkpoint(tmp_path / "run")["hf"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == tok.eot_id
    hf_tok = transformers_.AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    hf = transformers_.AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32).eval()
    text = make_text(2, seed=4) + " <|endoftext|> " + make_text(1, seed=5)
    ids = hf_tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == [tok.eot_id] + tok.encode(text, allowed_special="all") and ids.size(1) <= 64
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-4, atol=1e-4)
