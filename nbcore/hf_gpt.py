"""The `gpt` arch (the speedrun architecture nbcore trains) as a Hugging Face `transformers` model.

`nbcore.export.export_hf` copies this file into an export folder as `modeling_nbcore_gpt.py`, and
config.json's `auto_map` points at it, so anyone can load the folder with no nbcore installed:

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

It imports only torch and transformers (nbcore does not import it). Parameter names are
nbcore.model.GPT's, so the export's safetensors are that model's state dict, and the forward pass
is the same arithmetic: logits equal nbcore's for every switch (value embeddings, U-net skips,
x0 mix, QK-norm, partial rotary, sliding windows, soft-cap, tied or padded head, ReLU² or GELU).

Attention masks: causal, within the layer's sliding window (long or short, the windows the model
was configured with; training's growing window is not a property of the model), and, when the
model was built with `eot_id`, within the document: a token equal to <|endoftext|> starts a new
document, and a query never sees keys of an earlier document in the same row (the rule nbcore
trains and evaluates with). `attention_mask` (1 = real token) additionally hides padded keys, and
positions then count real tokens only, so a left-padded row scores like the unpadded one.
Generation recomputes the (at most seq_len) context each step: no KV cache.

Shapes: B batch, T sequence, D model dim, H heads, Dh head dim, V vocab.
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast


class NbcoreGPTConfig(PretrainedConfig):
    """nbcore.model.build_model's arguments for arch='gpt', resolved (no None left)."""
    model_type = "nbcore_gpt"

    def __init__(self, vocab_size=50304, num_layers=12, num_heads=6, head_dim=64, model_dim=768, seq_len=1024,
                 mlp_ratio=4, mlp_act="relu2", x0_mix=True, unet_skips=True, value_embeds=3, qk_norm=True,
                 rotary_fraction=0.5, sliding_window=True, window_long=1024, window_short=512, softcap=15.0,
                 tie_embeddings=False, padded_vocab=50304, eot_id=None, **kwargs):
        self.vocab_size, self.num_layers, self.num_heads, self.head_dim = vocab_size, num_layers, num_heads, head_dim
        self.model_dim, self.seq_len, self.mlp_ratio, self.mlp_act = model_dim, seq_len, mlp_ratio, mlp_act
        self.x0_mix, self.unet_skips, self.value_embeds, self.qk_norm = x0_mix, unet_skips, value_embeds, qk_norm
        self.rotary_fraction, self.sliding_window = rotary_fraction, sliding_window
        self.window_long, self.window_short, self.softcap = window_long, window_short, softcap
        self.tie_embeddings, self.padded_vocab, self.eot_id = tie_embeddings, padded_vocab, eot_id
        # the names generic tools read (lm-eval's max_length, generation, device maps)
        self.max_position_embeddings = seq_len
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = model_dim, num_layers, num_heads
        kwargs["tie_word_embeddings"] = False  # a tied head reads embed.weight directly (no second tensor)
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)


def rms(x):
    """RMS norm without a learned scale over the last dim (nbcore.model.norm)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_frequencies(head_dim, fraction, min_freq=1 / 1024):
    """(Dh/2,) float64: `fraction` of the pairs rotate, frequencies 1 .. min_freq log-spaced, the rest 0."""
    pairs = head_dim // 2
    n_rot = round(fraction * pairs)
    freqs = torch.zeros(pairs, dtype=torch.float64)
    if n_rot > 0:
        freqs[:n_rot] = min_freq ** torch.linspace(0, 1, n_rot, dtype=torch.float64)
    return freqs


def rotate(x, cos, sin):
    """x (B, T, H, Dh); cos/sin (B, T, 1, Dh/2) float32: pair i rotates dims (i, i + Dh/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class MLP(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.proj = nn.Linear(hidden, dim, bias=False)
        self.act = act

    def forward(self, x):
        h = self.fc(x)  # (B, T, mlp_ratio·D)
        return self.proj(F.relu(h).square() if self.act == "relu2" else F.gelu(h))


class Attention(nn.Module):
    def __init__(self, c, value_embed):
        super().__init__()
        H, Dh, D = c.num_heads, c.head_dim, c.model_dim
        self.num_heads, self.head_dim, self.qk_norm = H, Dh, c.qk_norm
        self.qkv = nn.Linear(D, 3 * H * Dh, bias=False)
        self.proj = nn.Linear(H * Dh, D, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.12 if c.qk_norm else Dh ** -0.5))
        self.v_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if value_embed else None
        self.rotary = c.rotary_fraction > 0

    def forward(self, x, ve, mask, cos, sin):
        B, T, _ = x.shape
        H, Dh = self.num_heads, self.head_dim
        qkv = self.qkv(x)  # (B, T, 3·H·Dh)
        q, k, v = qkv.view(B, T, 3, H, Dh).unbind(dim=2)  # (B, T, H, Dh) each
        if self.qk_norm:
            q, k = rms(q), rms(k)
        if self.rotary:
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if ve is not None:
            v = self.v_mix[0] * v + self.v_mix[1] * ve.view(B, T, H, Dh)
        q = q * self.scale
        q, k, v = (t.to(qkv.dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        causal = isinstance(mask, str)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal, scale=1.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * Dh))


class Block(nn.Module):
    def __init__(self, c, value_embed):
        super().__init__()
        self.x0_mix = nn.Parameter(torch.tensor([1.0, 0.0])) if c.x0_mix else None
        self.attn = Attention(c, value_embed)
        self.mlp = MLP(c.model_dim, int(c.mlp_ratio * c.model_dim), c.mlp_act)

    def forward(self, x, x0, ve, mask, cos, sin):
        if self.x0_mix is not None:
            x = self.x0_mix[0] * x + self.x0_mix[1] * x0
        x = x + self.attn(rms(x), ve, mask, cos, sin)
        return x + self.mlp(rms(x))


def long_window_layers(n):
    return [min(i, n - 1 - i) % 4 == 0 for i in range(n)]


def value_embed_layers(n, count):
    out = [None] * n
    for j in range(count):
        out[j] = j
        out[n - count + j] = j
    return out


class NbcoreGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = NbcoreGPTConfig
    base_model_prefix = "nbcore_gpt"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        c = config
        L, V, D, H, Dh = c.num_layers, c.vocab_size, c.model_dim, c.num_heads, c.head_dim
        self.ve_layers = value_embed_layers(L, c.value_embeds)
        self.long_layers = long_window_layers(L)
        self.embed = nn.Embedding(V, D)
        self.value_embeds = nn.ModuleList(nn.Embedding(V, H * Dh) for _ in range(c.value_embeds))
        self.blocks = nn.ModuleList(Block(c, self.ve_layers[i] is not None) for i in range(L))
        self.num_skips = L // 2 if c.unet_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips)) if self.num_skips else None
        self.head = None if c.tie_embeddings else nn.Linear(D, c.padded_vocab, bias=False)
        self.post_init()

    def _init_weights(self, module):  # the export's weights replace these
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def get_output_embeddings(self):
        return self.head

    def masks(self, input_ids, attention_mask):
        """One attention mask per layer: "causal" (SDPA's kernel) or (B, 1, T, T) bool, True = may attend."""
        c = self.config
        B, T = input_ids.shape
        dev = input_ids.device
        docs = None
        if c.eot_id is not None and bool((input_ids[:, 1:] == c.eot_id).any()):
            docs = (input_ids == c.eot_id).cumsum(dim=-1)  # (B, T) document ids
        long, short = (c.window_long, c.window_short) if c.sliding_window else (None, None)
        pad = attention_mask is not None and not bool(attention_mask.all())
        out = {}
        for w in {long, short}:
            if docs is None and not pad and (w is None or w >= T):
                out[w] = "causal"
                continue
            q = torch.arange(T, device=dev)[:, None]
            kv = torch.arange(T, device=dev)[None, :]
            ok = (q >= kv)[None, None]  # (1, 1, T, T)
            if w is not None:
                ok = ok & (q - kv < w)
            if docs is not None:
                ok = ok & (docs[:, None, :, None] == docs[:, None, None, :])
            if pad:
                ok = (ok & attention_mask.bool()[:, None, None, :]) | (q == kv)  # a padded query sees itself
            out[w] = ok.expand(B, 1, T, T)
        return [out[long if is_long else short] for is_long in self.long_layers]

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, return_dict=None,
                **kwargs):
        """input_ids (B, T) -> CausalLMOutputWithPast(logits (B, T, V) float32, loss if labels given)."""
        c = self.config
        if input_ids is None:
            raise ValueError("pass input_ids (B, T): this model takes token ids only")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                position_ids = torch.arange(input_ids.size(1), device=input_ids.device)[None]
        freqs = rotary_frequencies(c.head_dim, c.rotary_fraction).to(input_ids.device)
        angles = position_ids.to(torch.float64)[..., None] * freqs  # (B, T, Dh/2)
        cos, sin = angles.cos().float()[:, :, None], angles.sin().float()[:, :, None]  # (B, T, 1, Dh/2)
        masks = self.masks(input_ids, attention_mask)
        x = x0 = rms(self.embed(input_ids))  # (B, T, D)
        ve = [emb(input_ids) for emb in self.value_embeds]  # each (B, T, H·Dh)
        skips = []
        L = c.num_layers
        for i, block in enumerate(self.blocks):
            if i >= L - self.num_skips:
                j = L - 1 - i
                x = x + self.skip_weights[j] * skips[j]
            v = ve[self.ve_layers[i]] if self.ve_layers[i] is not None else None
            x = block(x, x0, v, masks[i], cos, sin)
            if i < self.num_skips:
                skips.append(x)
        x = rms(x)
        w = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, w)[..., :c.vocab_size].float()  # padding rows of the head cut off
        if c.softcap:
            logits = c.softcap * torch.tanh(logits / c.softcap)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """No KV cache: each step reads the last seq_len tokens again (nbcore crops the same way)."""
        T = self.config.seq_len
        out = {"input_ids": input_ids[:, -T:]}
        if attention_mask is not None:
            out["attention_mask"] = attention_mask[:, -T:]
        return out
