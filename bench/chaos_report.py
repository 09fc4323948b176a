"""The chaos run's figures (one JSON document) and what it prints; the last line is

    chaos: <calls> calls, <failed> failed, <wrong> wrong, worst recovery <s> s, RSS growth <pct>%
"""

from __future__ import annotations

from collections import Counter

import numpy as np

GOAL_RESTART_S, GOAL_RSS_PCT = 5.0, 10.0


def _latency(calls: list) -> dict:
    ms = [(c.t1 - c.t0) * 1000 for c in calls if not c.failed]
    if not ms:
        return {"calls": 0, "p50_ms": None, "p99_ms": None}
    return {"calls": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def _during(call, faults: list) -> bool:
    """The call overlaps a fault: from its injection until its component answers again (+1 s)."""
    return any(call.t0 <= (f.answered or call.t1) + 1.0 and call.t1 >= f.at for f in faults)


def summary(args, record, faults, batches, warm, end, graceful, killed, start, minutes) -> dict:
    calls = list(record.calls)
    online = [c for c in calls if c.kind != "batch"]
    failed = sum(c.failed for c in calls) + graceful["lost"] + (killed["status"] != "completed")
    wrong = sum(c.wrong for c in calls) + (killed["status"] == "completed" and not killed["ok"])
    total = len(calls) + graceful["requests"] + 1
    names = list(dict.fromkeys([*warm, *end]))
    growth = (sum(end.values()) - sum(warm.values())) / sum(warm.values()) * 100
    worst = max((f.recovery_s for f in faults), default=0.0)
    return {
        "provenance": args.provenance, "minutes": round(minutes, 1), "interval_s": args.interval,
        "clients": args.clients, "models": "MiniLM + reranker" if args.no_mpnet else "MiniLM + mpnet + reranker",
        "calls": total, "failed": failed, "wrong": wrong,
        "by_kind": {k: sum(c.kind == k for c in calls) for k in dict.fromkeys(c.kind for c in calls)},
        "errors": [f"{n} x {e}" for e, n in Counter(c.error[:160] for c in calls
                                                      if c.failed or c.wrong).most_common(10)],
        "latency": {"between_faults": _latency([c for c in online if not _during(c, faults)]),
                    "during_faults": _latency([c for c in online if _during(c, faults)])},
        "faults": [{**f.as_dict(start), "failed_calls": sum(c.failed and _during(c, [f]) for c in calls)}
                   for f in faults],
        "worst_recovery_s": round(worst, 2),
        "batch_jobs": {"jobs": len(batches), "lines": sum(b.lines for b in batches),
                       "ok": sum(b.ok for b in batches)},
        "batch_sigkill": killed, "graceful_stop": graceful,
        "rss_mb": {n: {"after_warmup": round(warm.get(n, 0.0)), "end": round(end.get(n, 0.0))} for n in names},
        "rss_growth_pct": round(growth, 1),
    }


def last_line(doc: dict) -> str:
    return (f"chaos: {doc['calls']} calls, {doc['failed']} failed, {doc['wrong']} wrong, worst recovery "
            f"{doc['worst_recovery_s']:.1f} s, RSS growth {doc['rss_growth_pct']:.1f}%")


def _s(value) -> str:
    return "-" if value is None else f"{value:.1f} s"


def lines(doc: dict) -> list[str]:
    lat = doc["latency"]
    out = ["", f"chaos: {doc['minutes']:g} min, {doc['models']}, {doc['clients']} clients, a fault every "
           f"{doc['interval_s']:g} s; calls by kind: " + ", ".join(f"{k} {v}" for k, v in doc["by_kind"].items())]
    for when, name in (("between_faults", "between faults"), ("during_faults", "during faults")):
        m = lat[when]
        out.append(f"latency {name}: {m['calls']} calls, p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms")
    out += ["", f"{'fault':<18}{'target':<34}{'at':>7}{'back after':>12}{'answering':>11}{'after back':>12}"
            f"{'failed calls':>14}"]
    for f in doc["faults"]:
        out.append(f"{f['fault']:<18}{f['target']:<34}{f['at_s']:>6.0f}s{_s(f['back_after_s']):>12}"
                   f"{_s(f['recovery_s']):>11}{_s(f['answering_after_restart_s']):>12}{f['failed_calls']:>14}")
    b, k, g = doc["batch_jobs"], doc["batch_sigkill"], doc["graceful_stop"]
    out += ["", f"batch jobs under load: {b['jobs']} ({b['lines']} lines), {b['ok']} complete and right",
            f"batch job, its gateway SIGKILLed after {k['lines_written_before_kill']} of {k['lines']} lines: "
            f"{k['status']}, {k['answered']} answered, {k['missing']} missing, {k['duplicated']} duplicated, "
            f"{k['wrong']} wrong",
            f"graceful stop (SIGTERM to embeddings-serve, in flight per gateway {g['in_flight_per_gateway']}): "
            f"{g['answered']} of {g['requests']} answered, {g['lost']} lost; embeddings-serve exited {g['serve_exit']}"]
    out += [f"error: {e}" for e in doc["errors"]]
    out += ["", f"{'process':<44}{'RSS after warm-up':>18}{'RSS at end':>12}"]
    out += [f"{n:<44}{m['after_warmup']:>15} MB{m['end']:>9} MB" for n, m in doc["rss_mb"].items()]
    return [*out, "", last_line(doc)]


def goals_met(doc: dict) -> bool:
    restarts = [f["answering_after_restart_s"] for f in doc["faults"] if f["restarted"]]
    return (doc["failed"] == 0 and doc["wrong"] == 0 and all(r <= GOAL_RESTART_S for r in restarts)
            and doc["rss_growth_pct"] <= GOAL_RSS_PCT)
