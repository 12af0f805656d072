"""nbcore.judge against a fake judge server on 127.0.0.1 (OpenAI- and Anthropic-shaped).

The server prefers the continuation containing "GOOD" (or always answers one position), and
can be scripted to time out, answer garbage, rate-limit (429 + Retry-After) or fail (5xx).
Waits are kept tiny through JudgeConfig's timeout and backoff parameters.
"""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nbcore import judge
from nbcore.judge import JudgeConfig, JudgeError
from test_compare import make_fake_run


class FakeJudge:
    def __init__(self, api="openai"):
        self.api = api
        self.script = []          # modes served first, in order; then `default`
        self.default = "ok"
        self.always = None        # "A", "B" or "tie": ignore the content
        self.requests = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                    mode = fake.script.pop(0) if fake.script else fake.default
                fake.serve(self, mode, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def verdict(self, body):
        if self.always:
            return self.always
        user = body["messages"][-1]["content"]
        a = re.search(r"\[Continuation A\]\n(.*)\n\[End of A\]", user, re.S).group(1)
        b = re.search(r"\[Continuation B\]\n(.*)\n\[End of B\]", user, re.S).group(1)
        return "A" if "GOOD" in a and "GOOD" not in b else "B" if "GOOD" in b and "GOOD" not in a else "tie"

    def reply(self, text):
        if self.api == "openai":
            return {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10}}
        return {"id": "x", "type": "message", "content": [{"type": "text", "text": text}],
                "usage": {"input_tokens": 100, "output_tokens": 10}}

    def serve(self, h, mode, body):
        def send(code, payload: bytes, headers=()):
            h.send_response(code)
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            try:
                h.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass

        if mode == "timeout":
            time.sleep(1.0)  # the client gave up after timeout_s
            return send(200, json.dumps(self.reply("Verdict: A")).encode())
        if mode == "garbage":
            return send(200, b"<html>upstream exploded</html>")
        if mode == "noverdict":
            return send(200, json.dumps(self.reply("Both are fine I suppose.")).encode())
        if mode == "badshape":
            return send(200, b'{"choices": [], "content": []}')
        if mode == "429":
            return send(429, b'{"error": "rate limited"}', [("Retry-After", "0.05")])
        if mode in ("500", "503"):
            return send(int(mode), b'{"error": "overloaded"}')
        if mode == "401":
            return send(401, b'{"error": "invalid api key"}')
        return send(200, json.dumps(self.reply(f"A is meh, B too.\nVerdict: {self.verdict(body)}")).encode())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = FakeJudge("openai")
    yield s
    s.close()


@pytest.fixture
def pair(tmp_path):
    """Two runs on the same 3 prompts; the experiment's outputs are the GOOD ones."""
    base = make_fake_run(tmp_path, "base", generations=["meh one", "meh two", "meh three"])
    exp = make_fake_run(tmp_path, "exp", stamp="20260101_130000",
                        generations=["GOOD one", "GOOD two", "GOOD three"])
    return base, exp


def cfg(url, api="openai", **kw):
    base = dict(api=api, base_url=url, model="judge-model", api_key="sk-test", timeout_s=0.3, max_retries=6,
                backoff_s=0.001, max_backoff_s=0.2, price_in_per_m=3.0, price_out_per_m=15.0)
    base.update(kw)
    return JudgeConfig(**base)


def lines(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


# ---------------------------------------------------------------- happy paths
def test_openai_judge_win_rate_usage_cost_and_files(server, pair):
    base, exp = pair
    s = judge.judge_runs(base, exp, cfg(server.url), workers=4)
    assert (s["wins"], s["losses"], s["ties"], s["n_prompts"], s["n_judgements"]) == (6, 0, 0, 3, 6)
    assert s["win_rate"] == 1.0 and s["win_rate_ci95"][0] == pytest.approx(0.4385, abs=1e-3)  # Wilson 3/3
    assert s["input_tokens"] == 600 and s["output_tokens"] == 60
    assert s["cost_usd"] == pytest.approx(600 / 1e6 * 3.0 + 60 / 1e6 * 15.0)
    recs = lines(exp / "judge.jsonl")
    assert len(recs) == 6 and {(r["prompt_id"], r["order"]) for r in recs} == {
        (f"p{i}", o) for i in range(3) for o in ("ab", "ba")}
    assert {r["verdict"] for r in recs if r["order"] == "ab"} == {"A"}  # experiment shown first
    assert {r["verdict"] for r in recs if r["order"] == "ba"} == {"B"}
    saved = json.loads((exp / "judge.json").read_text())
    assert saved[base.name]["win_rate"] == 1.0 and "api_key" not in saved[base.name]["config"]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["messages"][0]["role"] == "system"
    assert "sk-test" not in (exp / "judge.jsonl").read_text() + (exp / "judge.json").read_text()


def test_swapping_the_order_cancels_a_position_biased_judge(server, pair):
    server.always = "A"
    s = judge.judge_runs(*pair, cfg(server.url), workers=1)
    assert s["win_rate"] == 0.5 and (s["wins"], s["losses"]) == (3, 3) and s["picked_position_a"] == 1.0
    lo, hi = s["win_rate_ci95"]
    assert lo < 0.5 < hi and s["consistent_prompts"] == 0


def test_ties_count_half(server, pair):
    server.always = "tie"
    s = judge.judge_runs(*pair, cfg(server.url), workers=1)
    assert s["ties"] == 6 and s["win_rate"] == 0.5 and s["consistent_prompts"] == 3


def test_anthropic_api_shape(pair):
    srv = FakeJudge("anthropic")
    try:
        s = judge.judge_runs(*pair, cfg(srv.url + "/v1", api="anthropic"), workers=2)
    finally:
        srv.close()
    assert s["win_rate"] == 1.0 and s["input_tokens"] == 600
    req = srv.requests[0]
    assert req["path"] == "/v1/messages" and req["headers"]["x-api-key"] == "sk-test"
    assert req["headers"]["anthropic-version"] == judge.ANTHROPIC_VERSION
    assert req["body"]["system"] == judge.SYSTEM_PROMPT and req["body"]["messages"][0]["role"] == "user"
    assert req["body"]["max_tokens"] > 0


# ---------------------------------------------------------------- failures
def test_retries_with_backoff_through_every_kind_of_failure(server, pair):
    server.script = ["429", "500", "garbage", "noverdict", "timeout", "badshape", "503"]
    waits = []
    s = judge.judge_runs(*pair, cfg(server.url, max_retries=7), workers=1, sleep=waits.append)
    assert s["n_judgements"] == 6 and s["win_rate"] == 1.0
    first = lines(pair[1] / "judge.jsonl")[0]
    assert first["attempts"] == 8 and len(first["errors"]) == 7
    assert "HTTP 429" in first["errors"][0] and "timed out" in first["errors"][4]
    assert "not JSON" in first["errors"][2] and "Verdict" in first["errors"][3]
    assert waits[0] >= 0.05  # Retry-After honoured
    assert all(waits[i + 1] > waits[i] for i in range(1, 6))  # exponential: 0.002, 0.004, 0.008 ...
    assert waits[6] == pytest.approx(0.001 * 2 ** 6, rel=0.11)
    assert s["input_tokens"] == 100 * (6 + 1)  # the answer without a verdict was paid for too


def test_backoff_is_capped_and_retry_after_too():
    c = cfg("http://x", backoff_s=1.0, max_backoff_s=3.0, max_retries=5)
    waits = []
    orig = judge._post_once
    judge._post_once = lambda *a: (_ for _ in ()).throw(judge._Retryable("HTTP 429", retry_after=100))
    try:
        with pytest.raises(JudgeError):
            judge.ask(c, "s", "u", sleep=waits.append)
    finally:
        judge._post_once = orig
    assert waits == [3.0] * 5


def test_persistent_failure_is_a_clear_error_and_nothing_judged_is_lost(server, pair):
    base, exp = pair
    server.script = ["ok", "ok", "ok"]
    server.default = "500"
    with pytest.raises(JudgeError, match=r"failed 3 times in a row; last error: HTTP 500.*saved; re-run to resume"):
        judge.judge_runs(base, exp, cfg(server.url, max_retries=2), workers=1, sleep=lambda s: None)
    assert len(lines(exp / "judge.jsonl")) == 3
    server.default = "ok"
    before = len(server.requests)
    s = judge.judge_runs(base, exp, cfg(server.url), workers=1)
    assert len(server.requests) - before == 3  # only what was missing
    assert s["n_judgements"] == 6 and s["win_rate"] == 1.0 and len(lines(exp / "judge.jsonl")) == 6


def test_failure_with_parallel_workers_keeps_what_finished(server, pair):
    base, exp = pair
    server.script = ["ok", "ok"]
    server.default = "503"
    with pytest.raises(JudgeError):
        judge.judge_runs(base, exp, cfg(server.url, max_retries=1), workers=3, sleep=lambda s: None)
    assert len(lines(exp / "judge.jsonl")) == 2
    server.default = "ok"
    assert judge.judge_runs(base, exp, cfg(server.url), workers=3)["n_judgements"] == 6


def test_unauthorised_fails_at_once_naming_the_key(server, pair):
    server.default = "401"
    with pytest.raises(JudgeError, match=r"HTTP 401.*JUDGE_API_KEY"):
        judge.judge_runs(*pair, cfg(server.url), workers=1)
    assert len(server.requests) == 1


def test_unreachable_server_is_retried_then_explained(pair):
    c = cfg("http://127.0.0.1:9", max_retries=2)  # port 9 (discard): connection refused
    with pytest.raises(JudgeError, match="could not connect"):
        judge.judge_runs(*pair, c, workers=1, sleep=lambda s: None)


def test_a_torn_last_line_is_dropped_and_the_run_resumes(server, pair):
    base, exp = pair
    judge.judge_runs(base, exp, cfg(server.url), workers=1, max_prompts=1)
    path = exp / "judge.jsonl"
    path.write_text(path.read_text() + '{"baseline_run": "half-writ')
    s = judge.judge_runs(base, exp, cfg(server.url), workers=1)
    assert s["n_judgements"] == 6 and len(lines(path)) == 6


def test_a_different_judge_model_is_judged_separately(server, pair):
    base, exp = pair
    judge.judge_runs(base, exp, cfg(server.url), workers=1)
    n = len(server.requests)
    s = judge.judge_runs(base, exp, cfg(server.url, model="other"), workers=1)
    assert len(server.requests) - n == 6 and s["n_judgements"] == 6 and s["judge_model"] == "other"


# ---------------------------------------------------------------- pieces
def test_config_from_env_and_urls():
    env = {"JUDGE_API": "anthropic", "JUDGE_MODEL": "claude-x", "JUDGE_API_KEY": "sekrit-key"}
    c = judge.config_from_env(env)
    assert c.url == "https://api.anthropic.com/v1/messages" and judge.available(env)
    c = judge.config_from_env({**env, "JUDGE_API": "openai", "JUDGE_BASE_URL": "http://localhost:8000/v1/"})
    assert c.url == "http://localhost:8000/v1/chat/completions"
    assert "sekrit" not in repr(c) and c.api_key == "sekrit-key"
    with pytest.raises(JudgeError, match=r"\$JUDGE_API_KEY"):
        judge.config_from_env({"JUDGE_MODEL": "m"})
    assert not judge.available({"JUDGE_MODEL": "m"})
    with pytest.raises(ValueError, match="openai' or 'anthropic"):
        judge.config_from_env({**env, "JUDGE_API": "gemini"})


@pytest.mark.parametrize("text,want", [("Verdict: A", "A"), ("blah\nVerdict: **B**", "B"), ("verdict - Tie", "tie"),
                                       ("Verdict: A ... on reflection Verdict: B", "B"), ("I like A", None),
                                       ("Verdict: Both", None)])
def test_parse_verdict(text, want):
    assert judge.parse_verdict(text) == want


def test_pairing_checks_prompts(tmp_path):
    base = make_fake_run(tmp_path, "b")
    other = make_fake_run(tmp_path, "o", stamp="20260101_130000")
    recs = [json.loads(l) for l in (other / "generations.jsonl").read_text().splitlines()]
    recs[1]["prompt"] = "A different prompt."
    (other / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ValueError, match="prompt 'p1' differs"):
        judge.pair_generations(base, other)
    for r in recs:
        r["prompt_id"] = "q" + r["prompt_id"]
    (other / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ValueError, match="share no prompt_id"):
        judge.pair_generations(base, other)
    (other / "generations.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="run 05_eval"):
        judge.pair_generations(base, other)


def test_judging_a_run_against_itself_is_refused(pair):
    with pytest.raises(ValueError, match="same run"):
        judge.judge_runs(pair[0], pair[0], cfg("http://127.0.0.1:9"))


def test_extra_body_adds_and_removes_request_fields(server, pair):
    c = cfg(server.url, extra_body={"max_tokens": None, "temperature": None, "max_completion_tokens": 300})
    judge.judge_runs(*pair, c, workers=1, max_prompts=1)
    body = server.requests[0]["body"]
    assert "max_tokens" not in body and "temperature" not in body and body["max_completion_tokens"] == 300


def test_an_answer_cut_off_mid_body_is_retried(server, pair):
    class Cut(FakeJudge):
        def serve(self, h, mode, body):
            if mode == "cut":  # promise 1000 bytes, send 10, hang up
                h.send_response(200)
                h.send_header("Content-Length", "1000")
                h.end_headers()
                h.wfile.write(b'{"choices"')
                h.wfile.flush()
                h.close_connection = True
                return
            super().serve(h, mode, body)

    srv = Cut("openai")
    srv.script = ["cut"]
    try:
        s = judge.judge_runs(*pair, cfg(srv.url), workers=1, max_prompts=1)
    finally:
        srv.close()
    first = lines(pair[1] / "judge.jsonl")[0]
    assert s["n_judgements"] == 2 and first["attempts"] == 2 and "IncompleteRead" in first["errors"][0]


# ---------------------------------------------------------------- stale verdicts and garbage answers
def test_regenerated_outputs_and_changed_settings_are_judged_anew(server, pair):
    from nbcore import evaluate

    base, exp = pair
    judge.judge_runs(base, exp, cfg(server.url), workers=1)
    n = len(server.requests)
    assert judge.judge_runs(base, exp, cfg(server.url), workers=1)["n_judgements"] == 6
    assert len(server.requests) == n  # same texts, same judge: every verdict reused
    old = judge.read_generations(exp)
    evaluate.write_generations(exp / "generations.jsonl", [  # 05 regenerated: now the baseline is better
        {**rec, "output": "meh again"} for rec in old.values()])
    (base / "generations.jsonl").write_text((base / "generations.jsonl").read_text().replace("meh", "GOOD"))
    s = judge.judge_runs(base, exp, cfg(server.url), workers=1)
    assert len(server.requests) - n == 6 and s["win_rate"] == 0.0 and s["n_judgements"] == 6
    s = judge.judge_runs(base, exp, cfg(server.url, temperature=0.7), workers=1)
    assert len(server.requests) - n == 12 and s["n_judgements"] == 6


def test_a_judge_answering_garbage_is_counted_as_invalid_not_fatal(server, pair):
    server.default = "noverdict"
    waits = []
    s = judge.judge_runs(*pair, cfg(server.url, invalid_retries=1), workers=2, sleep=waits.append)
    assert s["invalid"] == 6 and s["n_judgements"] == 0 and s["win_rate"] is None
    assert len(server.requests) == 12 and len(waits) == 6  # one quick re-ask each, then on
    assert "6 invalid verdict(s)" in judge.format_summary(s)
    server.default = "ok"  # a re-run asks the invalid ones again
    s = judge.judge_runs(*pair, cfg(server.url), workers=1)
    assert s["invalid"] == 0 and s["n_judgements"] == 6 and s["win_rate"] == 1.0
