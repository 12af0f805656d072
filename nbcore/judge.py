"""An LLM judge: which of two runs writes the better continuation of the same prompt?

Reads two runs' `generations.jsonl` (written by 05_eval), pairs the outputs by `prompt_id`,
and asks a chat model which is better. Each pair is asked twice with the order swapped
(experiment as A, then as B), so a judge that favours a position cancels out.

The judge is any OpenAI-compatible (`POST /v1/chat/completions`) or Anthropic-compatible
(`POST /v1/messages`) endpoint, set by environment variables:

    JUDGE_API        "openai" (default) or "anthropic"
    JUDGE_BASE_URL   e.g. https://api.openai.com (default), https://api.anthropic.com,
                     http://localhost:8000/v1 for a local server (a trailing /v1 is fine)
    JUDGE_MODEL      e.g. gpt-4o-mini, claude-3-5-haiku-latest (required)
    JUDGE_API_KEY    the key (required; local servers accept any non-empty string)

Every judgement is appended to `judge.jsonl` in the experiment run's folder the moment it
arrives, so a crash or a rate limit loses nothing and a re-run resumes where it stopped.
The summary (`judge.json`, keyed by baseline run) holds the win rate with its 95% Wilson
interval, wins/losses/ties, the tokens used and their estimated cost.
Only the standard library talks HTTP (urllib).
"""
import hashlib
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import fileio
from .stats import wilson_interval

ENV_API, ENV_BASE_URL, ENV_MODEL, ENV_KEY = "JUDGE_API", "JUDGE_BASE_URL", "JUDGE_MODEL", "JUDGE_API_KEY"
DEFAULT_BASE_URL = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
ANTHROPIC_VERSION = "2023-06-01"
JUDGE_FILE, SUMMARY_FILE = "judge.jsonl", "judge.json"

SYSTEM_PROMPT = (
    "You are an impartial judge comparing two continuations of the same prompt, written by two small "
    "language models trained from scratch. Judge which continuation is better: fluent and grammatical, "
    "coherent, on topic with the prompt, factually sensible, and not repetitive. Length alone is not merit. "
    "The order of A and B means nothing. Think briefly, then end with exactly one line: "
    "'Verdict: A', 'Verdict: B' or 'Verdict: tie'."
)
USER_TEMPLATE = "Prompt:\n{prompt}\n\n[Continuation A]\n{a}\n[End of A]\n\n[Continuation B]\n{b}\n[End of B]\n"
_VERDICT = re.compile(r"verdict\s*[:\-]?\s*[*_`\"'\[(]*\s*(A|B|tie)\b", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge could not be reached or kept answering badly; what was judged so far is saved."""


class _Retryable(Exception):
    def __init__(self, what, retry_after=None):
        super().__init__(what)
        self.retry_after = retry_after


@dataclass
class JudgeConfig:
    api: str = "openai"                # "openai" or "anthropic"
    base_url: str = ""                 # empty: the provider's public URL
    model: str = ""
    api_key: str = field(default="", repr=False)
    timeout_s: float = 60.0            # per request
    max_retries: int = 6               # attempts after the first, per judgement (timeouts, 429/5xx, broken answers)
    invalid_retries: int = 1           # re-asks after an answer without a verdict; then it counts as invalid
    backoff_s: float = 2.0             # first wait; doubles each retry (with up to 10% jitter)
    max_backoff_s: float = 60.0        # cap on one wait (also caps Retry-After)
    max_tokens: int = 512
    temperature: float = 0.0
    price_in_per_m: float = 0.0        # USD per million input tokens, for the cost estimate
    price_out_per_m: float = 0.0       # USD per million output tokens
    extra_body: dict = field(default_factory=dict)  # merged into each request; a None value removes a field
                                                    # (e.g. {"max_tokens": None, "max_completion_tokens": 512})

    def __post_init__(self):
        if self.api not in DEFAULT_BASE_URL:
            raise ValueError(f"judge API must be 'openai' or 'anthropic' (set ${ENV_API}), got {self.api!r}")
        self.base_url = (self.base_url or DEFAULT_BASE_URL[self.api]).rstrip("/")

    @property
    def url(self) -> str:
        path = "/chat/completions" if self.api == "openai" else "/messages"
        return self.base_url + ("" if self.base_url.endswith("/v1") else "/v1") + path

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / 1e6 * self.price_in_per_m + output_tokens / 1e6 * self.price_out_per_m


def available(env=None) -> bool:
    """True when a judge key and model are set in the environment (the notebook skips the judge otherwise)."""
    env = os.environ if env is None else env
    return bool(env.get(ENV_KEY)) and bool(env.get(ENV_MODEL))


def config_from_env(env=None, **overrides) -> JudgeConfig:
    """A JudgeConfig from $JUDGE_API, $JUDGE_BASE_URL, $JUDGE_MODEL, $JUDGE_API_KEY; keyword overrides win."""
    env = os.environ if env is None else env
    values = {"api": env.get(ENV_API, "openai").strip().lower() or "openai",
              "base_url": env.get(ENV_BASE_URL, ""), "model": env.get(ENV_MODEL, ""),
              "api_key": env.get(ENV_KEY, "")}
    values.update({k: v for k, v in overrides.items() if v is not None})
    missing = [name for name, key in ((ENV_MODEL, "model"), (ENV_KEY, "api_key")) if not values[key]]
    if missing:
        raise JudgeError(f"the judge needs {' and '.join('$' + m for m in missing)} set (and ${ENV_API}=openai|"
                         f"anthropic, ${ENV_BASE_URL} for a non-default endpoint)")
    return JudgeConfig(**values)


# ---------------------------------------------------------------- one chat request
def _request_body(cfg: JudgeConfig, system: str, user: str) -> tuple[dict, dict]:
    headers = {"Content-Type": "application/json", "User-Agent": "nbcore-judge"}
    if cfg.api == "openai":
        headers["Authorization"] = f"Bearer {cfg.api_key}"
        body = {"model": cfg.model, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    else:
        headers["x-api-key"] = cfg.api_key
        headers["anthropic-version"] = ANTHROPIC_VERSION
        body = {"model": cfg.model, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                "system": system, "messages": [{"role": "user", "content": user}]}
    for k, v in cfg.extra_body.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body, headers


def _parse_response(cfg: JudgeConfig, data) -> tuple[str, dict]:
    """(text, {"input_tokens", "output_tokens"}) from a provider's JSON, or _Retryable if malformed."""
    try:
        if cfg.api == "openai":
            text = data["choices"][0]["message"]["content"]
            usage = data.get("usage") or {}
            tin, tout = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        else:
            text = "".join(b.get("text", "") for b in data["content"] if b.get("type", "text") == "text")
            usage = data.get("usage") or {}
            tin, tout = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Retryable(f"response JSON lacks the expected fields ({type(e).__name__}: {e})") from None
    if not isinstance(text, str):
        raise _Retryable("response content is not text")
    return text, {"input_tokens": int(tin or 0), "output_tokens": int(tout or 0)}


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _post_once(cfg: JudgeConfig, system: str, user: str) -> tuple[str, dict]:
    body, headers = _request_body(cfg, system, user)
    req = urllib.request.Request(cfg.url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace") if e.fp else ""
        if e.code == 429 or e.code >= 500 or e.code == 408:
            raise _Retryable(f"HTTP {e.code} {e.reason}", _retry_after(e.headers)) from None
        hint = {401: f"check ${ENV_KEY}", 403: f"check ${ENV_KEY} and its permissions",
                404: f"check ${ENV_BASE_URL} ({cfg.url}) and ${ENV_MODEL} ({cfg.model!r})",
                400: f"check ${ENV_MODEL} ({cfg.model!r}) and ${ENV_API} ({cfg.api!r})"}.get(e.code, "")
        raise JudgeError(f"judge request to {cfg.url} failed with HTTP {e.code} {e.reason}: {detail.strip()}"
                         + (f" ({hint})" if hint else "")) from None
    except (TimeoutError, socket.timeout):
        raise _Retryable(f"timed out after {cfg.timeout_s:g} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise _Retryable(f"timed out after {cfg.timeout_s:g} s") from None
        raise _Retryable(f"could not connect ({e.reason})") from None
    except (ConnectionError, OSError, http.client.HTTPException) as e:  # reset or cut off mid-read, remote closed ...
        raise _Retryable(f"connection failed ({type(e).__name__}: {e})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Retryable(f"answer is not JSON: {raw[:80]!r}") from None
    return _parse_response(cfg, data)


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's last 'Verdict: ...' line; None if it gave none."""
    found = _VERDICT.findall(text or "")
    if not found:
        return None
    v = found[-1]
    return "tie" if v.lower() == "tie" else v.upper()


def ask(cfg: JudgeConfig, system: str, user: str, sleep=time.sleep) -> dict:
    """One judgement with retries: {"verdict", "text", "usage", "attempts", "errors"}.

    Timeouts, connection failures, HTTP 429/5xx and garbage (non-JSON, missing fields) are
    retried after backoff_s * 2**k seconds (Retry-After when the server sends one), up to
    max_retries times; then JudgeError. Other HTTP errors (401, 404 ...) fail at once. An answer
    without a verdict line is asked again `invalid_retries` times, then returned with verdict
    None: an invalid verdict, counted and reported, never a reason to stop the comparison.
    """
    usage = {"input_tokens": 0, "output_tokens": 0}
    errors = []
    invalid = 0
    for attempt in range(cfg.max_retries + 1):
        try:
            text, u = _post_once(cfg, system, user)
            usage = {k: usage[k] + u[k] for k in usage}  # tokens of answers we could not use cost too
            verdict = parse_verdict(text)
            if verdict is None:
                invalid += 1
                if invalid > cfg.invalid_retries:
                    errors.append(f"no 'Verdict: A|B|tie' line in the answer: {text[-80:]!r}")
                    return {"verdict": None, "text": text, "usage": usage, "attempts": attempt + 1,
                            "errors": errors}
                raise _Retryable(f"no 'Verdict: A|B|tie' line in the answer: {text[-80:]!r}")
            return {"verdict": verdict, "text": text, "usage": usage, "attempts": attempt + 1, "errors": errors}
        except _Retryable as e:
            errors.append(str(e))
            if attempt == cfg.max_retries:
                break
            wait = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** attempt)
            wait *= 1.0 + 0.1 * random.random()
            if e.retry_after is not None:
                wait = min(cfg.max_backoff_s, max(wait, e.retry_after))
            sleep(wait)
    raise JudgeError(f"the judge at {cfg.url} (model {cfg.model!r}) failed {cfg.max_retries + 1} times in a row; "
                     f"last error: {errors[-1]}. Everything judged so far is saved; re-run to resume "
                     f"(raise max_retries/timeout_s, or check the endpoint)")


# ---------------------------------------------------------------- pairing two runs
def read_generations(run_dir) -> dict:
    """{prompt_id: record} of a run's generations.jsonl."""
    path = Path(run_dir) / "generations.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run 05_eval on {Path(run_dir).name} first (it writes generations.jsonl)")
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["prompt_id"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{i}: not a generation record with a prompt_id ({e})") from None
    return out


def pair_generations(baseline_dir, experiment_dir) -> list[dict]:
    """[{prompt_id, prompt, baseline, experiment}] for the prompts both runs answered."""
    base, exp = read_generations(baseline_dir), read_generations(experiment_dir)
    common = [pid for pid in base if pid in exp]
    if not common:
        raise ValueError(f"{Path(baseline_dir).name} and {Path(experiment_dir).name} share no prompt_id: "
                         "generate both with the same prompt list (05_eval)")
    pairs = []
    for pid in common:
        if base[pid].get("prompt") != exp[pid].get("prompt"):
            raise ValueError(f"prompt {pid!r} differs between the two runs' generations.jsonl: "
                             "regenerate both with the same prompt list")
        pairs.append({"prompt_id": pid, "prompt": base[pid].get("prompt", ""),
                      "baseline": base[pid].get("output", ""), "experiment": exp[pid].get("output", "")})
    return pairs


# ---------------------------------------------------------------- the record
def read_judgements(path) -> list[dict]:
    """Records of judge.jsonl; a half-written last line (a crash mid-append) is dropped and the file repaired."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out, bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(i)
    if bad and bad != [len(lines) - 1]:
        raise ValueError(f"{path}: lines {[b + 1 for b in bad]} are not JSON; fix or move the file")
    if bad:  # rewrite without the torn last line, so appends start on a clean line
        fileio.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return out


class _Appender:
    def __init__(self, path):
        self.path, self.lock = Path(path), threading.Lock()

    def __call__(self, rec):
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


VERDICT_SETTINGS = ("api", "base_url", "model", "max_tokens", "temperature", "extra_body")


def judgement_key(cfg: JudgeConfig, system: str, user: str) -> str:
    """What a verdict depends on, hashed: both texts as shown (prompt, A, B: so the order too), the
    system prompt and the judge's settings. A regenerated output or another judge is asked anew."""
    settings = {k: getattr(cfg, k) for k in VERDICT_SETTINGS}
    blob = json.dumps({"settings": settings, "system": system, "user": user}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _key(rec):
    return rec.get("key")  # records written before keys existed have none: they are asked again


def summarise(records: list[dict], cfg: JudgeConfig | None = None) -> dict:
    """Win rate of the experiment with its 95% Wilson interval (50% = no difference).

    Each prompt scores the mean of its judgements (win 1, tie 1/2, loss 0; both orders), so the
    interval counts prompts, not the two correlated orders of one prompt, as the trials.
    """
    invalid = sum(r.get("winner") == "invalid" for r in records)
    records = [r for r in records if r.get("winner") != "invalid"]
    by_prompt = {}
    for r in records:
        by_prompt.setdefault(r["prompt_id"], []).append({"experiment": 1.0, "tie": 0.5, "baseline": 0.0}[r["winner"]])
    wins = sum(r["winner"] == "experiment" for r in records)
    losses = sum(r["winner"] == "baseline" for r in records)
    ties = sum(r["winner"] == "tie" for r in records)
    n_prompts = len(by_prompt)
    score = sum(sum(v) / len(v) for v in by_prompt.values())
    tin = sum(r["usage"]["input_tokens"] for r in records)
    tout = sum(r["usage"]["output_tokens"] for r in records)
    first_pos = sum(r["verdict"] == "A" for r in records)
    out = {"n_prompts": n_prompts, "n_judgements": len(records), "wins": wins, "losses": losses, "ties": ties,
           "invalid": invalid,
           "win_rate": score / n_prompts if n_prompts else None,
           "win_rate_ci95": list(wilson_interval(score, n_prompts)) if n_prompts else None,
           "consistent_prompts": sum(len(set(v)) == 1 and len(v) == 2 for v in by_prompt.values()),
           "picked_position_a": first_pos / len(records) if records else None,
           "input_tokens": tin, "output_tokens": tout}
    if cfg is not None:
        out.update(judge_api=cfg.api, judge_model=cfg.model, price_in_per_m=cfg.price_in_per_m,
                   price_out_per_m=cfg.price_out_per_m, cost_usd=cfg.cost(tin, tout))
    return out


def judge_runs(baseline_dir, experiment_dir, config: JudgeConfig | None = None, max_prompts: int | None = None,
               workers: int = 4, progress=None, sleep=time.sleep) -> dict:
    """Judge two runs' generations; append each judgement to <experiment>/judge.jsonl as it arrives.

    A judgement is reused only when its key matches (`judgement_key`: both texts, their order,
    the judge's settings), so a re-run resumes, and regenerated outputs or a changed judge are
    asked anew. Answers without a verdict are recorded as invalid and counted in the summary
    (`invalid`), then asked again on the next run. Returns the summary, also saved in
    <experiment>/judge.json under the baseline's name.
    """
    cfg = config or config_from_env()
    baseline_dir, experiment_dir = Path(baseline_dir), Path(experiment_dir)
    if baseline_dir.resolve() == experiment_dir.resolve():
        raise ValueError(f"baseline and experiment are the same run ({baseline_dir.name}): pick two different runs")
    pairs = pair_generations(baseline_dir, experiment_dir)[:max_prompts]
    path = experiment_dir / JUDGE_FILE
    done = {_key(r) for r in read_judgements(path) if r.get("winner") != "invalid"}
    items = []
    for p in pairs:
        for order in ("ab", "ba"):
            exp_is_a = order == "ab"  # "ab": experiment shown as A
            a, b = (p["experiment"], p["baseline"]) if exp_is_a else (p["baseline"], p["experiment"])
            user = USER_TEMPLATE.format(prompt=p["prompt"], a=a, b=b)
            items.append((p, order, user, judgement_key(cfg, SYSTEM_PROMPT, user)))
    keys = {item[3] for item in items}
    todo = [item for item in items if item[3] not in done]
    append = _Appender(path)

    def one(item):
        p, order, user, key = item
        exp_is_a = order == "ab"
        res = ask(cfg, SYSTEM_PROMPT, user, sleep=sleep)
        v = res["verdict"]
        winner = ("invalid" if v is None else "tie" if v == "tie"
                  else ("experiment" if (v == "A") == exp_is_a else "baseline"))
        rec = {"baseline_run": baseline_dir.name, "experiment_run": experiment_dir.name,
               "prompt_id": p["prompt_id"], "order": order, "verdict": v, "winner": winner, "key": key,
               "judge_api": cfg.api, "judge_model": cfg.model, "usage": res["usage"], "attempts": res["attempts"],
               "errors": res["errors"], "answer": res["text"],
               "judged_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        append(rec)
        if progress:
            progress(rec)
        return rec

    first_error = None
    if workers <= 1:
        for item in todo:
            one(item)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, item) for item in todo]
            for fut in futures:
                if fut.cancelled():
                    continue
                try:
                    fut.result()
                except JudgeError as e:  # stop queued work, let running requests finish and be saved
                    first_error = first_error or e
                    for f in futures:
                        f.cancel()
    if first_error:
        raise first_error

    latest = {}  # key -> its latest record (a valid verdict wins over earlier invalid ones)
    for r in read_judgements(path):
        k = _key(r)
        if k in keys and (k not in latest or latest[k].get("winner") == "invalid"):
            latest[k] = r
    records = list(latest.values())
    summary = {"baseline_run": baseline_dir.name, "experiment_run": experiment_dir.name,
               **summarise(records, cfg), "config": {k: v for k, v in asdict(cfg).items() if k != "api_key"}}
    summary_path = experiment_dir / SUMMARY_FILE
    all_summaries = fileio.read_json(summary_path) if summary_path.exists() else {}
    all_summaries[baseline_dir.name] = summary
    fileio.write_json(summary_path, all_summaries)
    return summary


def format_summary(s: dict) -> str:
    """One line: 'experiment wins 62.5% [48.1, 75.0] of 40 prompts (W/L/T 45/28/7), 12,345 tokens, $0.0042'."""
    cost = f", ${s['cost_usd']:.4f}" if "cost_usd" in s else ""
    bad = s.get("invalid", 0)
    invalid = (f"; {bad} invalid verdict(s) (answers without a 'Verdict:' line) not counted; a re-run asks "
               f"them again" if bad else "")
    if s["win_rate"] is None:
        return (f"{s['experiment_run']} vs {s['baseline_run']}: no valid verdict{invalid}, "
                f"{s['input_tokens'] + s['output_tokens']:,} tokens{cost}")
    lo, hi = s["win_rate_ci95"]
    return (f"{s['experiment_run']} vs {s['baseline_run']}: win rate {100 * s['win_rate']:.1f}% "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] over {s['n_prompts']} prompts (50% = no difference; "
            f"W/L/T {s['wins']}/{s['losses']}/{s['ties']} of {s['n_judgements']} judgements), "
            f"{s['input_tokens'] + s['output_tokens']:,} tokens{cost}{invalid}")


__all__ = ["JudgeConfig", "JudgeError", "available", "config_from_env", "ask", "parse_verdict",
           "read_generations", "pair_generations", "read_judgements", "summarise", "judge_runs",
           "format_summary", "judgement_key", "SYSTEM_PROMPT", "USER_TEMPLATE"]
