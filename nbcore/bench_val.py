"""`python -m nbcore.bench val`: 05_eval's full-split val loss, before and after (tokens/s).

The demo's model (gpt "tiny": L=4, D=128, H=4, V=2049, T=256, document masking at <|endoftext|>)
scores random val tokens cut into documents of about 300 tokens. Reference: the val loop as it
was (the model's (B, T, V) logits and per-token losses, summed through a boolean index: a host
sync per batch on a GPU) with 05's old batch size of 8. Then `evaluate.val_loss` (hidden states
per batch, head and softmax on cache-sized chunks, sums kept on the device) at several batch
sizes. Every method is timed in turn, --repeats times, the best run kept (other processes disturb
less), and the losses are checked equal.
"""
import time

import numpy as np
import torch


def _reference_val_loss(model, batches, ignore=-100):
    """The loop 05 ran before: full (B, T, V) logits, boolean-index sums."""
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for x, y in batches:
            losses = model(x, targets=y, reduction="none")  # (B, T)
            keep = y != ignore
            total[0] += losses.double()[keep].sum()
            total[1] += keep.sum()
    return {"val_loss": float(total[0] / total[1]), "val_tokens": int(total[1])}


def run_val(args) -> int:
    from . import evaluate
    from .bench import _table
    from .model import SIZE_PRESETS, build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    V, T = args.vocab, args.seq_len
    model = build_model("gpt", V, seq_len=T, device="cpu", seed=0, eot_id=V - 1, zero_init=False,
                        **SIZE_PRESETS[args.size]).eval()
    g = np.random.default_rng(0)
    tokens = g.integers(0, V - 1, args.tokens + 1)
    starts = np.cumsum(g.integers(100, 500, args.tokens // 100 + 1))  # documents of 100-500 tokens
    tokens[starts[starts <= args.tokens]] = V - 1  # each starts with <|endoftext|>
    tokens = torch.from_numpy(tokens)

    def batches(B):
        n = args.tokens // (B * T)
        return [(tokens[k * B * T:(k + 1) * B * T].view(B, T), tokens[k * B * T + 1:(k + 1) * B * T + 1].view(B, T))
                for k in range(n)]

    methods = [("before: full logits, boolean-index sums", 8, _reference_val_loss)]
    methods += [(f"after: evaluate.val_loss", B, evaluate.val_loss) for B in args.batch_sizes]
    print(f"model: gpt {args.size}, V={V}, T={T}, {model.num_params():,} parameters, CPU float32, "
          f"{torch.get_num_threads()} threads; {args.tokens:,} val tokens per run", flush=True)
    best = [float("inf")] * len(methods)
    results = [None] * len(methods)
    for _ in range(args.repeats):  # interleaved: a busy moment hurts every method alike
        for i, (_, B, fn) in enumerate(methods):
            data = batches(B)
            t = time.perf_counter()
            results[i] = fn(model, data)
            best[i] = min(best[i], time.perf_counter() - t)
    ref_rate = results[0]["val_tokens"] / best[0]
    rows = []
    for (name, B, _), t, r in zip(methods, best, results):
        rate = r["val_tokens"] / t
        rows.append([name, B, r["val_tokens"], f"{t:.2f}", f"{rate:,.0f}", f"{args.split_tokens / rate:.1f}",
                     f"{rate / ref_rate:.2f}x", f"{r['val_loss']:.6f}"])
    print()
    print(_table(rows, ["val loss", "B", "tokens", "seconds", "tokens/s", f"s per {args.split_tokens:,} tokens",
                        "vs before", "val loss"]))
    diff = max(abs(r["val_loss"] - results[0]["val_loss"]) for r in results)
    print(f"\nlargest val-loss difference between methods: {diff:.1e} nats")
    return 0


def add_val(sub):
    p = sub.add_parser("val", help="05_eval's full-split val loss: before vs after, tokens/s")
    p.add_argument("--size", default="tiny", help="a preset of nbcore.model.SIZE_PRESETS (default tiny: the demo)")
    p.add_argument("--vocab", type=int, default=2049, help="V (the demo's tokenizer: 2048 + <|endoftext|>)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--tokens", type=int, default=65536, help="val tokens per timed run")
    p.add_argument("--split-tokens", type=int, default=1_000_000, help="the split to extrapolate to (demo: 1M)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(run=run_val)
