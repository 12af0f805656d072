"""nbcore: the thin shared package the workbook's notebooks import.

One module per job: `tokenizer` (BPE), `corpus` (text sources), `fileio` (atomic
writes), `params` (notebook parameter checks), `notebooks` (running chapters with
papermill), `paths` (where things live). Shapes in comments use one notation:
B batch, T sequence, D model dim, H heads, Dh head dim, V vocab, L layers.
"""

__version__ = "0.1.0"
