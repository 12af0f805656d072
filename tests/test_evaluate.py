"""nbcore.evaluate: batched multiple-choice scoring equals one-at-a-time, Wilson intervals,
val loss and bits per byte, generations, eval.json appending, offline skips, loading a run."""
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from nbcore import checkpoint, evaluate, fileio
from nbcore.evaluate import EncodedItem
from nbcore.model import build_model

WORDS = ("the a one cat dog bird fish man woman child ran sat sang swam looked walked jumped over under "
         "near into on hill river house tree garden quickly slowly happily red blue green small big old "
         "and but then because so when while after before it was is were").split()


# ---------------------------------------------------------------- shared fixtures (also used by
# tests/test_export.py and tests/test_notebook_05.py)
def make_text(n_sentences=400, seed=0) -> str:
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 12))).capitalize() + "."
                    for _ in range(n_sentences))


def make_tokenizer(folder=None, vocab_size=320):
    from nbcore.tokenizer import train_bpe

    tok = train_bpe([make_text()], vocab_size, workers=1, name="test-bpe")
    if folder is not None:
        tok.save(folder)
    return tok


def write_texts(folder, n_docs, n_sentences, prefix="doc") -> str:
    """n_docs text files of make_text(n_sentences, seed=i) in `folder`; returns the local: corpus glob."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"{prefix}{i}.txt").write_text(make_text(n_sentences, seed=i), encoding="utf-8")
    return f"local:{folder / '*.txt'}"


def make_tiny_shards(root, n_docs, n_sentences, shard_size, val_tokens):
    """A make_tokenizer tokenizer in root/tok and one train shard of write_texts' documents in root/shards."""
    from nbcore import shards

    make_tokenizer(Path(root) / "tok")
    shards.make_shards(write_texts(Path(root) / "text", n_docs, n_sentences), Path(root) / "tok",
                       Path(root) / "shards", shard_size=shard_size, num_shards=1, workers=1,
                       val_tokens=val_tokens, progress=False)
    return Path(root) / "shards"


def tiny_model(arch="gpt", vocab_size=321, seq_len=64, seed=0, **kw):
    """A small random model whose outputs depend on the input (no zero-initialised head)."""
    if arch == "gpt":
        kw.setdefault("zero_init", False)
        kw.setdefault("eot_id", vocab_size - 1)
    if arch == "llama3":
        kw.setdefault("num_kv_heads", 2)
    return build_model(arch, vocab_size, 2, 4, 32, seq_len, device="cpu", seed=seed, **kw).eval()


def random_items(n, vocab_size, seed=0, bos=None, max_len=60):
    """EncodedItems of random tokens: HellaSwag-like (4 endings) and ARC-like (3 to 5) mixed."""
    g = random.Random(seed)
    out = []
    for _ in range(n):
        ctx = [g.randrange(vocab_size - 1) for _ in range(g.randint(1, 12))]
        if bos is not None:
            ctx = [bos] + ctx
        rows, starts = [], []
        for _ in range(g.choice((3, 4, 4, 5))):
            end = [g.randrange(vocab_size - 1) for _ in range(g.randint(1, min(20, max_len - 2)))]
            row = (ctx + end)[-max_len:]
            rows.append(row)
            starts.append(len(row) - len(end))
        label = g.randrange(len(rows))
        # lengths of the endings' text in characters and bytes (from the rows: the draws above stay as they were)
        chars = [(7 * len(r) + 3 * k) % 50 + 1 for k, r in enumerate(rows)]
        out.append(EncodedItem(rows=rows, starts=starts, label=label, chars=chars,
                               n_bytes=[c + (r[-1] % 3) for c, r in zip(chars, rows)]))
    return out


def mc_item(context, endings, label):
    from nbcore.evaldata import MultipleChoiceItem

    return MultipleChoiceItem(context=context, endings=list(endings), label=label)


def write_benchmark_files(folder, n=6, seed=0) -> dict:
    """Small files in each benchmark's own format (HellaSwag jsonl; ARC-Easy and PIQA rows as on
    the hub), made from random sentences: {name: path}. The real loaders parse them."""
    g = random.Random(seed)
    sent = lambda k: " ".join(g.choices(WORDS, k=k))
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"hellaswag": [], "arc_easy": [], "piqa": []}
    for i in range(n):
        rows["hellaswag"].append({"ind": i, "activity_label": "Walking", "ctx_a": sent(8).capitalize() + ".",
                                  "ctx_b": sent(3), "ctx": "", "endings": [sent(g.randint(3, 8)) + "." for _ in range(4)],
                                  "label": g.randrange(4), "split_type": "indomain"})
        k = g.choice((3, 4, 5))
        labels = list("ABCDE")[:k]
        rows["arc_easy"].append({"id": f"arc{i}", "question": sent(7) + "?",
                                 "choices": {"text": [sent(g.randint(1, 4)) for _ in range(k)], "label": labels},
                                 "answerKey": g.choice(labels)})
        rows["piqa"].append({"goal": sent(6), "sol1": sent(7), "sol2": sent(7), "label": g.randrange(2)})
    out = {}
    for name, rs in rows.items():
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rs), encoding="utf-8")
    return out


# ---------------------------------------------------------------- batched == one at a time
@pytest.mark.parametrize("arch", ["gpt", "nanogpt", "llama3"])
def test_batched_scores_equal_one_at_a_time(arch):
    V = 321
    model = tiny_model(arch, V)
    items = random_items(16, V, seed=1, bos=V - 1)
    items += random_items(4, V, seed=2, bos=V - 1, max_len=18)  # cut to fit: contexts differ per ending
    assert sum(map(evaluate.shares_context, items)) < len(items) - 1
    # several items share each context length, so the shared-context path batches them together
    assert max(sum(it.starts[0] == s for it in items) for s in range(64)) >= 3
    ref = evaluate.score_items_one_at_a_time(model, items)
    # small batches and a small token budget force many forwards, padding and reordering
    for kw in ({"batch_size": 7, "max_batch_tokens": 300}, {"batch_size": 1000, "max_batch_tokens": 10**6},
               {"batch_size": 5, "max_batch_tokens": 10**6, "pad_multiple": 16, "shared_context": False},
               {"batch_size": 1000, "max_batch_tokens": 10**6, "shared_context": False}):
        got = evaluate.score_items(model, items, pad_id=V - 1, **kw)
        assert [r["index"] for r in got] == list(range(len(items)))
        for a, b in zip(got, ref):
            assert (a["pred"], a["pred_norm"], a["label"]) == (b["pred"], b["pred_norm"], b["label"])
            torch.testing.assert_close(torch.tensor(a["sum_losses"]), torch.tensor(b["sum_losses"]),
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.tensor(a["mean_losses"]), torch.tensor(b["mean_losses"]),
                                       rtol=1e-5, atol=1e-5)
        assert evaluate.summarize(got) == evaluate.summarize(ref)


def test_one_at_a_time_matches_a_hand_computed_loss():
    V = 321
    model = tiny_model("nanogpt", V)
    row, start = [5, 9, 14, 3, 7, 11], 4  # context 5 9 14 3, ending 7 11
    item = EncodedItem(rows=[row, [5, 9, 14, 3, 8]], starts=[start, 4], label=0, chars=[7, 3], n_bytes=[7, 3])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([row[:-1]])), dim=-1)[0]  # (T, V)
    want = [-logp[3, 7].item(), -logp[4, 11].item()]  # position t predicts token t+1
    for res in (evaluate.score_items_one_at_a_time(model, [item])[0], evaluate.score_items(model, [item])[0]):
        assert res["sum_losses"][0] == pytest.approx(sum(want), rel=1e-5)
        assert res["mean_losses"][0] == pytest.approx(sum(want) / 2, rel=1e-5)


def test_pack_masks_only_the_ending_and_pads_right():
    x, y = evaluate.pack_rows([[1, 2, 3, 4], [5, 6, 7]], [2, 1], pad_id=0, pad_multiple=4)
    assert x.shape == y.shape == (2, 4)  # (B, T): longest row 4 tokens -> 3 predictions -> padded to 4
    assert x.tolist() == [[1, 2, 3, 0], [5, 6, 0, 0]]
    assert y.tolist() == [[-100, 3, 4, -100], [6, 7, -100, -100]]


def _dist_worker(rank, world, port, items, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = tiny_model("gpt", 321)
        res = evaluate.score_items(model, items, pad_id=320, batch_size=6)
        if rank == 1:  # every rank holds every item's scores
            torch.save(res, out_path)
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_scoring_gathers_every_item_on_every_rank(tmp_path):
    import socket

    import torch.multiprocessing as mp

    items = random_items(11, 321, seed=3, bos=320)  # 11 items: ranks get 6 and 5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(2, port, items, tmp_path / "r1.pt"), nprocs=2, join=True)
    got = torch.load(tmp_path / "r1.pt", weights_only=False)
    ref = evaluate.score_items(tiny_model("gpt", 321), items, pad_id=320)
    assert [r["index"] for r in got] == list(range(11))
    for a, b in zip(got, ref):
        assert (a["pred"], a["pred_norm"]) == (b["pred"], b["pred_norm"])
        assert a["sum_losses"] == pytest.approx(b["sum_losses"], rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------- encoding items
def test_join_ending_adds_one_space_only_when_needed():
    assert evaluate.join_ending("A man is", "walking.") == " walking."
    assert evaluate.join_ending("Question: why?\nAnswer:", " because") == " because"
    assert evaluate.join_ending("Goal: open a jar\n", "twist the lid") == "twist the lid"
    assert evaluate.join_ending("", "x") == "x"


def test_encode_item_tokens_bos_and_left_truncation():
    tok = make_tokenizer()
    item = mc_item("The cat sat on the", ["mat.", " dog ran over the hill quickly."], 0)
    enc = evaluate.encode_item(tok, item, bos_id=tok.eot_id)
    ctx = tok.encode_ordinary(item.context)
    for row, start, ending in zip(enc.rows, enc.starts, item.endings):
        assert row[0] == tok.eot_id and row[1:start] == ctx
        assert row[start:] == tok.encode_ordinary(evaluate.join_ending(item.context, ending))
        assert tok.decode(row[1:]) == item.context + " " + ending.lstrip()
    cap = max(len(r) - s for r, s in zip(enc.rows, enc.starts)) + 2  # every ending fits, contexts are cut
    short = evaluate.encode_item(tok, item, bos_id=tok.eot_id, max_len=cap)
    for row, start, full, fstart in zip(short.rows, short.starts, enc.rows, enc.starts):
        assert len(row) == min(cap, len(full)) and row == full[-len(row):]
        assert row[start:] == full[fstart:]  # the ending is always whole
    with pytest.raises(ValueError, match="does not fit seq_len 2"):
        evaluate.encode_item(tok, item, max_len=2)


# ---------------------------------------------------------------- accuracy and Wilson intervals
def test_wilson_interval_against_reference_values():
    # published 95% Wilson intervals: 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634], 50/100 -> [0.4038, 0.5962]
    assert evaluate.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert evaluate.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert evaluate.wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert evaluate.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # z = 2, 2 of 4: centre 1/2, half-width sqrt(1/8) exactly
    assert evaluate.wilson_interval(2, 4, z=2.0) == pytest.approx((0.5 - 8 ** -0.5, 0.5 + 8 ** -0.5), abs=1e-12)
    with pytest.raises(ValueError):
        evaluate.wilson_interval(5, 4)


def test_each_rule_picks_its_own_ending_on_a_hand_computed_item():
    """One item where the four rules disagree. Ending losses (nats) and lengths:
        0: sum 6.0, 2 tokens, 12 chars, 12 bytes -> per token 3.00, per char 0.500, per byte 0.500
        1: sum 7.0, 4 tokens,  9 chars, 20 bytes -> per token 1.75, per char 0.778, per byte 0.350
        2: sum 8.0, 2 tokens, 20 chars, 21 bytes -> per token 4.00, per char 0.400, per byte 0.381
    acc (smallest sum) -> 0; acc_norm (per char, lm-eval) -> 2; acc_bytes -> 1; acc_per_token -> 1."""
    sums, means = [6.0, 7.0, 8.0], [3.0, 1.75, 4.0]
    r = evaluate.item_result(0, 2, sums, means, chars=[12, 9, 20], n_bytes=[12, 20, 21])
    assert (r["pred"], r["pred_norm"], r["pred_bytes"], r["pred_per_token"]) == (0, 2, 1, 1)
    assert (r["correct"], r["correct_norm"], r["correct_bytes"], r["correct_per_token"]) == (False, True, False, False)
    # lm-eval: argmax(loglikelihood / len) with loglikelihood = -sum; the same picks, computed its way
    import numpy as np
    lls = -np.array(sums)
    assert int(np.argmax(lls / np.array([12, 9, 20]))) == 2 and int(np.argmax(lls / np.array([12, 20, 21]))) == 1
    with pytest.raises(ValueError, match="characters and bytes"):
        evaluate.item_result(0, 0, sums, means)


def test_encode_item_records_the_choice_lengths_lm_eval_divides_by():
    """Characters and bytes of the ending without its separator space: 'é' is 1 character, 2 bytes."""
    tok = make_tokenizer()
    item = mc_item("The cat sat on the", [" mat.", " café ran", "dog"], 0)
    enc = evaluate.encode_item(tok, item, bos_id=tok.eot_id)
    assert enc.chars == [4, 8, 3] and enc.n_bytes == [4, 9, 3]
    assert evaluate.choice_text(" café ran") == "café ran" and evaluate.choice_text("  x") == " x"


def test_encode_item_moves_trailing_context_space_to_the_ending_like_lm_eval():
    """Context 'Answer: ' + ending 'yes': lm-eval encodes 'Answer:' then ' yes' (one token ' yes'
    when the tokenizer has it), not 'Answer: ' then 'yes'."""
    tok = make_tokenizer()
    item = mc_item("The cat sat on the ", ["hill.", "dog"], 0)
    enc = evaluate.encode_item(tok, item, bos_id=tok.eot_id)
    ctx = tok.encode_ordinary("The cat sat on the")
    for row, start, ending in zip(enc.rows, enc.starts, item.endings):
        assert row[1:start] == ctx
        whole = tok.encode_ordinary("The cat sat on the " + ending)
        assert row[start:] == whole[len(ctx):] == tok.encode_ordinary(" " + ending)


def test_summarize_counts_every_rule():
    res = [evaluate.item_result(0, 0, [1.0, 2.0], [2.0, 1.0], [1, 1], [1, 1]),       # acc, norm, bytes right
           evaluate.item_result(1, 1, [3.0, 2.0, 5.0], [3.0, 1.0, 0.5], [1, 1, 1], [1, 1, 100]),  # acc, norm right
           evaluate.item_result(2, 2, [1.0, 1.0, 9.0], [9.0, 9.0, 1.0], [1, 1, 100], [1, 1, 1]),  # norm, per-token
           evaluate.item_result(3, 0, [1.0, 1.0], [1.0, 2.0], [1, 1], [1, 1])]        # ties -> first: all right
    s = evaluate.summarize(res)
    assert (s["n"], s["acc"], s["acc_norm"], s["acc_bytes"], s["acc_per_token"]) == (4, 0.75, 1.0, 0.5, 0.5)
    assert s["acc_norm_unit"] == "char"
    assert s["acc_ci95"] == pytest.approx(list(evaluate.wilson_interval(3, 4)))
    assert s["acc_per_token_ci95"] == pytest.approx(list(evaluate.wilson_interval(2, 4)))
    assert s["acc_bytes_ci95"] == pytest.approx(list(evaluate.wilson_interval(2, 4)))
    with pytest.raises(ValueError, match="no items"):
        evaluate.summarize([])


def test_tables_name_each_rule_and_read_old_entries():
    new = {"n": 4, "acc": 0.75, "acc_ci95": [0.3, 0.95], "acc_norm": 1.0, "acc_norm_ci95": [0.5, 1.0],
           "acc_bytes": 0.5, "acc_bytes_ci95": [0.1, 0.9], "acc_per_token": 0.25, "acc_per_token_ci95": [0, 0.7],
           "acc_norm_unit": "char", "seconds": 1.0}
    old = {"n": 4, "acc": 0.5, "acc_ci95": [0.1, 0.9], "acc_norm": 0.125, "acc_norm_ci95": [0, 0.5]}  # per token
    table = evaluate.benchmarks_table({"hellaswag": new, "arc_easy": old})
    head, _, hs, arc = table.splitlines()
    assert "acc_norm % (per char)" in head and "acc_bytes %" in head and "acc_per_token %" in head
    assert [c.strip() for c in hs.split("|")[1:-1]][:8] == ["HellaSwag", "4", "75.0", "[30.0, 95.0]", "100.0",
                                                            "[50.0, 100.0]", "50.0", "25.0"]
    # an eval.json entry written before acc_norm meant per character: its number shows as acc_per_token
    assert [c.strip() for c in arc.split("|")[1:-1]][4:8] == ["-", "-", "-", "12.5"]
    entry = {"checkpoint": "c/step_1.pt", "step": 1, "benchmarks": {"hellaswag": new, "arc_easy": old}}
    line = evaluate.headline_table(entry).splitlines()[2]
    assert "| 100.0 |" in line and "12.5 (per token)" in line


# ---------------------------------------------------------------- val loss and bits per byte
def test_val_loss_is_the_token_weighted_mean_and_bpb_converts_units():
    model = tiny_model("llama3", 321)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 320, (3, 16), generator=g), torch.randint(0, 320, (3, 16), generator=g))
               for _ in range(4)]
    res = evaluate.val_loss(model, batches)
    with torch.no_grad():
        want = sum(model(x, y, reduction="sum").item() for x, y in batches) / (4 * 3 * 16)
    assert res["val_tokens"] == 192 and res["val_loss"] == pytest.approx(want, rel=1e-6)
    assert evaluate.bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert evaluate.bits_per_byte(2.0, 4.0) == pytest.approx(2.0 / math.log(2) / 4.0)
    with pytest.raises(ValueError, match="no val tokens"):
        evaluate.val_loss(model, [])


# ---------------------------------------------------------------- generations
def test_prompts_file_is_package_data_with_unique_ids():
    prompts = evaluate.load_prompts()
    assert len(prompts) >= 20 and len({p["id"] for p in prompts}) == len(prompts)
    assert all(p["prompt"].strip() for p in prompts)


def test_generations_are_seeded_recorded_and_round_trip(tmp_path):
    tok = make_tokenizer()
    model = tiny_model("gpt", tok.n_vocab, eot_id=tok.eot_id)
    prompts = [{"id": "a", "prompt": "The cat"}, {"id": "b", "prompt": "A dog ran"}]
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=20, checkpoint="ck.pt")
    one = evaluate.generate_samples(model, tok, prompts, seed=7, **kw)
    assert one == evaluate.generate_samples(model, tok, prompts, seed=7, **kw)
    assert one[1] == evaluate.generate_samples(model, tok, prompts[1:], seed=7, **kw)[0]  # order-independent
    others = [evaluate.generate_samples(model, tok, prompts, seed=s, **kw) for s in (8, 9, 10)]
    assert any(o[0]["output"] != one[0]["output"] for o in others)
    assert one[0]["settings"] == {"temperature": 1.0, "top_k": 20, "seed": 7, "max_new_tokens": 12,
                                  "checkpoint": "ck.pt"}
    # greedy: the argmax continuation, computed by hand without the KV cache
    greedy = evaluate.generate_samples(model, tok, prompts[:1], max_new_tokens=5, temperature=0.0)[0]
    ids = [tok.eot_id] + tok.encode_ordinary("The cat")
    for _ in range(5):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    new = ids[1 + len(tok.encode_ordinary("The cat")):]
    new = new[:new.index(tok.eot_id)] if tok.eot_id in new else new
    assert greedy["output"] == tok.decode(new)
    path = evaluate.write_generations(tmp_path / "generations.jsonl", one)
    assert evaluate.read_generations(path) == one
    assert len(path.read_text().splitlines()) == 2


# ---------------------------------------------------------------- eval.json
def test_eval_json_appends_and_never_loses_entries(tmp_path):
    e1 = evaluate.make_entry("checkpoints/step_000010.pt", 10, {"val_loss": 3.0, "val_tokens": 100}, 1.2,
                             {"hellaswag": {"skipped": "offline"}}, {"max_items": 0})
    e2 = evaluate.make_entry("checkpoints/step_000020.pt", 20, {"val_loss": 2.5, "val_tokens": 100}, 1.0, {}, {})
    evaluate.append_eval(tmp_path, e1)
    evaluate.append_eval(tmp_path, e2)
    evaluate.append_eval(tmp_path, e2)  # the same checkpoint again: a second entry, the first kept
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert [e["step"] for e in on_disk] == [10, 20, 20]
    assert on_disk[0]["benchmarks"] == {"hellaswag": {"skipped": "offline"}}
    assert set(on_disk[0]) >= {"checkpoint", "step", "evaluated_at", "val_loss", "val_bpb", "val_tokens",
                               "benchmarks", "settings"}
    assert list(evaluate.latest_evals(tmp_path)) == ["checkpoints/step_000010.pt", "checkpoints/step_000020.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temp files left behind


def test_a_broken_eval_json_is_reported_and_left_untouched(tmp_path):
    (tmp_path / "eval.json").write_text('{"not": "a list"}')
    entry = evaluate.make_entry("c.pt", 1)
    with pytest.raises(evaluate.EvalFileError, match="expected a list"):
        evaluate.append_eval(tmp_path, entry)
    (tmp_path / "eval.json").write_text("[{")
    with pytest.raises(evaluate.EvalFileError, match="not valid JSON"):
        evaluate.append_eval(tmp_path, entry)
    assert (tmp_path / "eval.json").read_text() == "[{"
    with pytest.raises(ValueError, match="lacks 'benchmarks'"):
        evaluate.append_eval(tmp_path / "new", {"checkpoint": "c", "step": 1, "evaluated_at": "now"})


# ---------------------------------------------------------------- benchmarks: offline and local files
def test_offline_benchmark_is_skipped_with_the_reason(monkeypatch):
    from nbcore import evaldata

    def offline(*a, **k):
        raise evaldata.DatasetUnavailable("HellaSwag could not be downloaded (no network) and is not cached")

    monkeypatch.setattr(evaluate, "benchmark_loaders",
                        lambda: {"hellaswag": offline, "arc_easy": offline, "piqa": offline})
    out = evaluate.run_benchmark(tiny_model("nanogpt", 321), None, "hellaswag")
    assert out["results"] == [] and "no network" in out["summary"]["skipped"]
    assert set(out["summary"]) == {"skipped"}
    with pytest.raises(ValueError, match="unknown benchmark 'hellaswg'"):
        evaluate.load_benchmark("hellaswg")


@pytest.mark.parametrize("name", ["hellaswag", "arc_easy", "piqa"])
def test_run_benchmark_scores_a_local_file_through_the_real_loader(tmp_path, name):
    from nbcore import evaldata

    tok = make_tokenizer()
    path = write_benchmark_files(tmp_path, n=5)[name]
    model = tiny_model("gpt", tok.n_vocab, eot_id=tok.eot_id)
    out = evaluate.run_benchmark(model, tok, name, path=path, max_items=4, batch_size=3)
    s = out["summary"]
    assert s["n"] == 4 and len(out["results"]) == 4 and len(out["items"]) == 4
    assert s["acc"] == sum(r["correct"] for r in out["results"]) / 4
    loader = evaldata.LOADERS[name]
    items = loader(path=str(path)) if name == "hellaswag" else loader(data_files=str(path))
    assert [len(it.endings) for it in items[:4]] == [len(r["sum_losses"]) for r in out["results"]]
    ref = evaluate.score_items_one_at_a_time(model, evaluate.encode_items(tok, items[:4], bos_id=tok.eot_id))
    assert [r["pred"] for r in out["results"]] == [r["pred"] for r in ref]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate.load_benchmark(name, tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- loading a run
def make_run(run_dir, tok_dir, arch="gpt", seq_len=64, step=5, data_dir=None):
    """A run folder as 04_train leaves it: checkpoints/step_*.pt (extra: model_config) + tokenizer.json."""
    from nbcore.tokenizer import BPETokenizer

    tok = BPETokenizer.load(tok_dir)
    model = tiny_model(arch, tok.n_vocab, seq_len=seq_len, **({"eot_id": tok.eot_id} if arch == "gpt" else {}))
    opt = torch.optim.AdamW(model.parameters())
    checkpoint.save(checkpoint.checkpoint_path(run_dir, step), model, [opt], step,
                    extra={"model_config": model.config, "parameters": {"arch": arch}})
    fileio.write_json(run_dir / "tokenizer.json", {"tokenizer_dir": str(tok_dir), "data_dir": data_dir,
                                                   "name": tok.name, "n_vocab": tok.n_vocab, "eot_id": tok.eot_id})
    return model


def test_load_run_rebuilds_the_model_and_tokenizer(tmp_path):
    make_tokenizer(tmp_path / "tok")
    model = make_run(tmp_path / "run", tmp_path / "tok", step=3)
    make_run(tmp_path / "run", tmp_path / "tok", step=7)  # a later checkpoint (other weights: same seed)
    loaded = evaluate.load_run(tmp_path / "run")
    assert loaded.step == 7 and loaded.checkpoint.name == "step_000007.pt"
    first = evaluate.load_run(tmp_path / "run" / "checkpoints" / "step_000003.pt")
    assert first.step == 3 and first.run_dir == tmp_path / "run"
    x = torch.randint(0, 320, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(first.model(x), model(x))
    assert first.tokenizer.encode_ordinary("the cat") == make_tokenizer().encode_ordinary("the cat")
    with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
        (tmp_path / "empty").mkdir()
        evaluate.load_run(tmp_path / "empty")
