"""nbcore: the thin shared package the workbook's notebooks import.

One module per job:
- text and tokens: `corpus` (built-in, local files, FineWeb), `bpe_reference` and `tokenizer`
  (byte-level BPE), `shards` (token files and their manifest), `loader` (distributed batches),
  `evaldata` (HellaSwag, ARC-Easy, PIQA);
- model and training: `attention`, `model` (gpt / nanogpt / llama3), `optim` (Muon, Adam,
  schedules), `dist` (torch.distributed set-up), `checkpoint`, `runs` (the run record);
- results: `evaluate` (loss, bits per byte, benchmarks, generations), `export` (safetensors,
  Hugging Face Llama), `stats` (Welch, Wilson), `compare` (curves, tables, paper), `judge`;
- plumbing: `params` (notebook parameter checks), `notebooks` (papermill), `launch` (run a
  parameter set, torchrun), `fileio` (atomic writes), `workers` (helper processes for 01 and 02),
  `paths`, `bench` (benchmarks).

Shapes in comments use one notation: B batch, T sequence, D model dim, H heads, Dh head dim,
V vocab, L layers.
"""

__version__ = "0.1.0"
