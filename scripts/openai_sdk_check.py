#!/usr/bin/env python3
"""Drives a running lorad with the official OpenAI Python SDK over its Unix socket (httpx's `uds` transport).

    python3 scripts/openai_sdk_check.py --socket /run/lorad/lorad.sock --model gemma-3-270m-q4_k_m

Runs, in order: chat.completions.create(store=True) + retrieve + list + messages; files.create (fine-tune JSONL) +
retrieve + list + content; fine_tuning.jobs.create (a tiny supervised job) + retrieve + list + list_events, polls it
to `succeeded`, checkpoints.list, chat with the fine-tuned adapter; a second job cancelled with jobs.cancel; SDK errors
for an unknown job (NotFoundError) and a bad file (BadRequestError). Prints one line per check and a JSON summary;
exits 1 at the first failed check (with what was expected and what came back), 2 when the SDK is missing.
"""
import argparse, json, sys, tempfile, time

try:
    import openai
    try:
        import httpx2 as httpx  # openai >= 3 ships on httpx2
    except ImportError:
        import httpx
except ImportError as e:
    print(f"the OpenAI SDK is not installed ({e}); scripts/setup.sh installs it into the venv", file=sys.stderr)
    sys.exit(2)

checks = []


def check(name, ok, detail=""):
    checks.append(name)
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""), flush=True)
    if not ok:
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--model", required=True, help="the base model's id (GET /v1/models)")
    ap.add_argument("--suffix", default="sdk-check")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
    a = ap.parse_args()

    client = openai.OpenAI(
        base_url="http://localhost/v1", api_key="unused", max_retries=0, timeout=300,
        http_client=openai.DefaultHttpxClient(transport=httpx.HTTPTransport(uds=a.socket)))

    # Stored chat completions.
    msgs = [{"role": "user", "content": "Name a primary colour."}]
    c = client.chat.completions.create(model=a.model, messages=msgs, store=True, max_tokens=8, temperature=0,
                                       metadata={"suite": "sdk"})
    check("chat.completions.create(store=True)", c.id and c.choices and c.choices[0].message.content is not None, c)
    got = client.chat.completions.retrieve(c.id)
    check("chat.completions.retrieve", got.id == c.id and got.choices[0].message.content == c.choices[0].message.content,
          got)
    page = client.chat.completions.list(model=a.model, metadata={"suite": "sdk"}, limit=10)
    check("chat.completions.list", any(x.id == c.id for x in page.data), [x.id for x in page.data])
    m = client.chat.completions.messages.list(c.id)
    check("chat.completions.messages.list", [x.content for x in m.data][:1] == [msgs[0]["content"]], m)

    # Files.
    lines = [{"messages": [{"role": "user", "content": f"Capital of {k}?"},
                           {"role": "assistant", "content": f"CAPITAL: {v}"}]}
             for k, v in [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
        path = f.name
    with open(path, "rb") as fh:
        up = client.files.create(file=fh, purpose="fine-tune")
    check("files.create", up.id.startswith("file-") and up.purpose == "fine-tune" and up.bytes > 0, up)
    check("files.retrieve", client.files.retrieve(up.id).id == up.id)
    check("files.list", any(x.id == up.id for x in client.files.list().data))
    content = client.files.content(up.id).read()
    check("files.content", content == open(path, "rb").read(), content[:80])
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines[:3]) + '{"messages": [{"role": "robot"}]}\n')
        bad = f.name
    try:
        with open(bad, "rb") as fh:
            client.files.create(file=fh, purpose="fine-tune")
        check("files.create rejects a bad line", False, "no error")
    except openai.BadRequestError as e:
        check("files.create rejects a bad line (400 naming line 4)", "line 4" in str(e), str(e))

    # Fine-tuning jobs.
    hp = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0}
    job = client.fine_tuning.jobs.create(
        model=a.model, training_file=up.id, suffix=a.suffix, seed=7, metadata={"suite": "sdk"},
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        extra_body={"lora": {"rank": 4, "alpha": 8}})
    check("fine_tuning.jobs.create", job.id.startswith("ftjob-") and job.status in
          ("validating_files", "queued", "running"), job)
    check("fine_tuning.jobs.retrieve", client.fine_tuning.jobs.retrieve(job.id).id == job.id)
    check("fine_tuning.jobs.list", any(x.id == job.id for x in client.fine_tuning.jobs.list(limit=20).data))
    deadline = time.time() + a.timeout
    while True:
        j = client.fine_tuning.jobs.retrieve(job.id)
        if j.status in ("succeeded", "failed", "cancelled") or time.time() > deadline:
            break
        time.sleep(0.5)
    check("job succeeded", j.status == "succeeded" and j.fine_tuned_model, j)
    ev = client.fine_tuning.jobs.list_events(job.id, limit=100)
    check("fine_tuning.jobs.list_events", len(ev.data) > 0 and all(e.object == "fine_tuning.job.event" for e in ev.data),
          ev)
    check("a metrics event", any(e.type == "metrics" for e in ev.data), [e.type for e in ev.data])
    cp = client.fine_tuning.jobs.checkpoints.list(job.id)
    check("fine_tuning.jobs.checkpoints.list", all(x.fine_tuning_job_id == job.id for x in cp.data), cp)
    out = client.chat.completions.create(model=j.fine_tuned_model, messages=[msgs[0]], max_tokens=8, temperature=0)
    check("the fine-tuned adapter serves", out.model == j.fine_tuned_model and out.choices, out)

    # Cancel: a job with many epochs, cancelled while queued or running.
    long = client.fine_tuning.jobs.create(
        model=a.model, training_file=up.id, suffix=a.suffix + "-cancel", seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}})
    cj = client.fine_tuning.jobs.cancel(long.id)
    check("fine_tuning.jobs.cancel", cj.id == long.id and cj.status in ("cancelled", "running", "queued"), cj)
    deadline = time.time() + 120
    while client.fine_tuning.jobs.retrieve(long.id).status != "cancelled" and time.time() < deadline:
        time.sleep(0.5)
    check("the cancelled job ends cancelled", client.fine_tuning.jobs.retrieve(long.id).status == "cancelled")

    try:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
        check("unknown job is 404", False, "no error")
    except openai.NotFoundError:
        check("unknown job is 404", True)

    print(json.dumps({"checks": len(checks), "job": job.id, "fine_tuned_model": j.fine_tuned_model,
                      "trained_tokens": j.trained_tokens, "openai": openai.__version__}))


if __name__ == "__main__":
    main()
