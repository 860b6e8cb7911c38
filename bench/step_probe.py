#!/usr/bin/env python3
"""Streams one long completion and prints the arrival time of every token (one decode step
each) as JSON: used by bench/replace_hiccup.sh to see the step time around a plan switch.

  bench/step_probe.py http://127.0.0.1:8000 MAX_TOKENS > probe.json
"""
import http.client, json, sys, time, urllib.parse

base, n = sys.argv[1], int(sys.argv[2])
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
c.request("GET", "/v1/models")
model = json.loads(c.getresponse().read())["data"][0]["id"]
body = json.dumps({"model": model, "prompt": "The history of", "max_tokens": n,
                   "stream": True, "ignore_eos": True, "temperature": 0})
c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
r = c.getresponse()
times, err = [], None
for raw in r:
    line = raw.decode().strip()
    if not line.startswith("data:"):
        continue
    data = line[5:].strip()
    if data == "[DONE]":
        break
    ev = json.loads(data)
    if "error" in ev:
        err = ev["error"]
        continue
    times.append(time.time())
print(json.dumps({"times": times, "error": err}))
