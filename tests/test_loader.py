"""The distributed training loader and val iteration, on shards the tests write."""
import numpy as np
import pytest
import torch

from nbcore.loader import IGNORE, TokenLoader, doc_aligned_starts, val_batch_count, val_batches
from nbcore.shards import write_shard

V = 1000
EOT = 999


@pytest.fixture
def shard_dir(tmp_path):
    """Three train shards of distinct, position-coded tokens (so every slice is identifiable)."""
    rng = np.random.default_rng(0)
    files = []
    for i, n in enumerate([2000, 1500, 2600]):
        toks = rng.integers(0, EOT, size=n)
        toks[rng.random(n) < 0.05] = EOT  # document starts
        toks[0] = EOT
        files.append(write_shard(tmp_path / f"train_{i + 1:06d}.bin", toks, V))
    write_shard(tmp_path / "val_000000.bin", np.arange(1234) % EOT, V)
    return tmp_path


def train_files(d):
    return sorted(d.glob("train_*.bin"))


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_shapes_and_shift(shard_dir):
    ld = TokenLoader(train_files(shard_dir), batch_size=4, seq_len=16)
    x, y = ld.next_batch()
    assert x.shape == (4, 16) and y.shape == (4, 16)  # (B, T)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # rows are slices of a shard: find every row in one of the files
    flat = [np.fromfile(f, dtype="<u2", offset=1024) for f in train_files(shard_dir)]
    assert len(_where(x, y, flat)) == 4
    assert ld.step == 1


def _where(x, y, flat_files):
    """(file, start) of each row of (x, y) in the shards (rows are distinct slices here)."""
    out = []
    for b in range(x.shape[0]):
        row = np.append(x[b].numpy(), y[b, -1].item())
        for i, t in enumerate(flat_files):
            windows = np.lib.stride_tricks.sliding_window_view(t, len(row))  # (n, T+1)
            out += [(i, int(s)) for s in np.flatnonzero((windows == row).all(axis=1))]
    return out


def test_rows_come_from_all_over_the_shard_and_move_between_epochs(shard_dir):
    """One step's rows are drawn from the whole shard (not one contiguous passage), T apart
    from an offset drawn per epoch, so the next epoch reads other windows of the text."""
    files = train_files(shard_dir)
    flat = [np.fromfile(f, dtype="<u2", offset=1024) for f in files]
    B, T = 4, 10
    ld = TokenLoader(files, B, T, seed=0, verbose=False)
    per_epoch = sum((len(t) - 1) // (B * T) for t in flat)
    offsets = []
    for epoch in range(2):
        seen = {}
        for _ in range(per_epoch):
            where = _where(*ld.next_batch(), flat)
            assert len(where) == B and len({i for i, _ in where}) == 1  # one shard per step
            starts = sorted(s for _, s in where)
            assert starts != list(range(starts[0], starts[0] + B * T, T))  # not B consecutive rows
            for i, s in where:
                seen.setdefault(i, set()).add(s)
        assert ld.epoch == epoch
        for i, starts in seen.items():  # every row once, on one grid of stride T
            assert len({s % T for s in starts}) == 1
            assert len(starts) == ((len(flat[i]) - 1) // (B * T)) * B
        offsets.append({i: min(starts) % T for i, starts in seen.items()})
    assert offsets[0] != offsets[1]


def test_union_of_ranks_is_single_rank_batch(shard_dir):
    files = train_files(shard_dir)
    B, T, W, steps = 3, 8, 2, 60  # 60 steps cross an epoch boundary
    single = batches(TokenLoader(files, B * W, T, seed=7, verbose=False), steps)
    per_rank = [batches(TokenLoader(files, B, T, rank=r, world_size=W, seed=7, verbose=False), steps)
                for r in range(W)]
    for k in range(steps):
        xs = torch.cat([per_rank[r][k][0] for r in range(W)])
        ys = torch.cat([per_rank[r][k][1] for r in range(W)])
        assert torch.equal(xs, single[k][0]) and torch.equal(ys, single[k][1])
        # and the ranks' rows are disjoint slices
        assert not torch.equal(per_rank[0][k][0], per_rank[1][k][0])


def test_resume_equals_running_through(shard_dir):
    files = train_files(shard_dir)
    through = batches(TokenLoader(files, 4, 8, seed=3, verbose=False), 80)
    a = TokenLoader(files, 4, 8, seed=3, verbose=False)
    batches(a, 37)
    state = a.state_dict()
    b = TokenLoader(files, 4, 8, seed=3, verbose=False)
    b.load_state_dict(state)
    assert b.step == 37
    for k, (x, y) in enumerate(batches(b, 43), start=37):
        assert torch.equal(x, through[k][0]) and torch.equal(y, through[k][1])
    # the same global batch split over two ranks resumes from a one-rank state
    r1 = TokenLoader(files, 2, 8, rank=1, world_size=2, seed=3, verbose=False)
    r1.load_state_dict(state)
    assert torch.equal(r1.next_batch()[0], through[37][0][2:])


def test_resume_refuses_other_geometry(shard_dir):
    files = train_files(shard_dir)
    state = TokenLoader(files, 4, 8).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        TokenLoader(files, 4, 16).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        TokenLoader(files, 4, 8, seed=1).load_state_dict(state)


def test_epochs_are_logged_and_reshuffled(shard_dir, capsys):
    files = train_files(shard_dir)
    B, T = 2, 10
    ld = TokenLoader(files, B, T, seed=0)
    per_epoch = sum((np.fromfile(f, dtype="<u2", offset=1024).size - 1) // (B * T) for f in files)
    first = [x.clone() for x, _ in batches(ld, per_epoch)]
    assert ld.epoch == 0
    second = [x.clone() for x, _ in batches(ld, per_epoch)]
    assert ld.epoch == 1
    assert "epoch 1 begins at step %d" % per_epoch in capsys.readouterr().out
    rows = lambda xs: [tuple(r) for x in xs for r in x.tolist()]  # noqa: E731
    assert len(set(rows(first))) == per_epoch * B  # no row twice within an epoch
    assert rows(first) != rows(second)


def test_no_shuffle_reads_in_file_order(shard_dir):
    files = train_files(shard_dir)
    x, _ = TokenLoader(files, 2, 10, shuffle=False).next_batch()
    first = np.fromfile(files[0], dtype="<u2", offset=1024)
    assert np.array_equal(x.flatten().numpy(), first[:20])


def test_seed_changes_order_and_is_deterministic(shard_dir):
    files = train_files(shard_dir)
    a = batches(TokenLoader(files, 2, 8, seed=1), 5)
    b = batches(TokenLoader(files, 2, 8, seed=1), 5)
    c = batches(TokenLoader(files, 2, 8, seed=2), 5)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_align_to_docs(shard_dir):
    files = train_files(shard_dir)
    ld = TokenLoader(files, 3, 12, rank=1, world_size=2, align_to_docs=True, eot_id=EOT, seed=0, verbose=False)
    for x, y in batches(ld, 40):
        assert (x[:, 0] == EOT).all()  # every row starts a document
        assert torch.equal(x[:, 1:], y[:, :-1])
    toks = np.array([EOT, 1, 2, EOT, 3, 4, 5, 6, 7, EOT, 8, EOT, 9, 10])
    # rows of T=3 start at eot positions at or after the previous start + T
    assert doc_aligned_starts(toks, EOT, 3).tolist() == [0, 3, 9]
    with pytest.raises(ValueError, match="eot_id"):
        TokenLoader(files, 2, 8, align_to_docs=True)


def test_flat_is_one_sequence_per_rank(shard_dir):
    files = train_files(shard_dir)
    flat_files = [np.fromfile(f, dtype="<u2", offset=1024) for f in files]
    ld = TokenLoader(files, 4, 8, seed=5, flat=True, verbose=False)
    for _ in range(20):
        xf, yf = ld.next_batch()
        assert xf.shape == yf.shape == (1, 32)  # (1, B*T)
        assert torch.equal(xf[:, 1:], yf[:, :-1])
        # one stretch of the token stream: the rows of a flat block stay contiguous
        assert len(_where(xf, yf, flat_files)) == 1


def test_too_little_data_is_a_clear_error(shard_dir):
    with pytest.raises(ValueError, match="global batch"):
        TokenLoader(train_files(shard_dir), 64, 128)
    with pytest.raises(ValueError, match="world_size"):
        TokenLoader(train_files(shard_dir), 2, 8, rank=2, world_size=2)


def test_val_batches_cover_val_shard_disjointly(shard_dir):
    val = [shard_dir / "val_000000.bin"]
    B, T, W, M = 2, 10, 3, 1200  # max_tokens M below the split's 1230: whole batches only (the whole split: below)
    n = val_batch_count(val, B, T, W, max_tokens=M)
    assert n == (1234 - 1) // (B * T * W)
    per_rank = [list(val_batches(val, B, T, rank=r, world_size=W, max_tokens=M)) for r in range(W)]
    assert all(len(p) == n for p in per_rank)
    single = list(val_batches(val, B * W, T, max_tokens=M))
    for k in range(n):
        assert torch.equal(torch.cat([per_rank[r][k][0] for r in range(W)]), single[k][0])
    # contiguous rows from the start of the shard, in order
    all_x = torch.cat([x.flatten() for x, _ in single])
    assert torch.equal(all_x, torch.arange(n * B * T * W) % EOT)
    assert len(list(val_batches(val, B, T, world_size=W, max_tokens=2 * B * T * W))) == 2
    with pytest.raises(ValueError, match="fewer than one global val batch"):
        list(val_batches(val, 64, 64, max_tokens=1000))  # a cap below the split (19 rows) and B = 64
    with pytest.raises(ValueError, match="fewer than one row of 2001 tokens"):
        list(val_batches(val, 1, 2000))
    # a shard folder works as `files`: its val split
    assert len(list(val_batches(shard_dir, B, T))) == -(-(1234 - 1) // T // B)


def test_the_whole_val_split_is_every_row_whatever_b_and_the_ranks(shard_dir):
    """Without max_tokens every row of T is scored once: the last global batch is padded with
    rows whose targets are IGNORE, so 04 (B rows) and 05 (16384 // T rows) score the same tokens."""
    val = [shard_dir / "val_000000.bin"]
    T, n_rows = 10, (1234 - 1) // 10  # 123 rows
    for B, W in ((1, 1), (4, 1), (2, 3), (64, 2)):
        assert val_batch_count(val, B, T, W) == -(-n_rows // (B * W))
        per_rank = [list(val_batches(val, B, T, rank=r, world_size=W)) for r in range(W)]
        xs = torch.cat([torch.cat([per_rank[r][k][0] for r in range(W)]) for k in range(len(per_rank[0]))])
        ys = torch.cat([torch.cat([per_rank[r][k][1] for r in range(W)]) for k in range(len(per_rank[0]))])
        assert all(x.shape == (B, T) for p in per_rank for x, _ in p)  # one shape: no recompile for the tail
        assert int((ys != IGNORE).sum()) == n_rows * T  # every row, once
        assert torch.equal(xs[:n_rows].flatten(), torch.arange(n_rows * T) % EOT)  # in order from the start
        assert (ys[n_rows:] == IGNORE).all()
    # a max_tokens of at least the split is the whole split too (not the whole batches below it)
    assert val_batch_count(val, 64, T, 1, max_tokens=n_rows * T) == 2 == val_batch_count(val, 64, T, 1, 10 ** 9)
    assert val_batch_count(val, 64, T, 1, max_tokens=n_rows * T - 1) == 1
    # two shards: rows run on from one shard into the next inside a batch
    two = [shard_dir / "val_000000.bin", shard_dir / "val_000000.bin"]
    (x, y), = val_batches(two, 2 * n_rows, T)
    assert int((y != IGNORE).sum()) == 2 * n_rows * T and torch.equal(x[n_rows:], x[:n_rows])
