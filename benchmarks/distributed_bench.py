"""One study, several workers: storage overhead per trial and throughput with 1 and 2 workers.

Part 1 — overhead: a study of ``--overhead-trials`` trials whose evaluation costs nothing, run
by one worker on each storage (SQLite file, journal file, PostgreSQL on localhost), so what
is timed is qpruner's loop on that storage: reading the study, proposing, registering,
running and storing a trial. Part 2 — throughput: the same study (PostgreSQL) filled by 1 and
then 2 worker processes, each trial a fixed CPU-bound job (``--work`` 256×256 matmuls, one
thread per worker) standing in for a fine-tune; finished trials per minute.

    python benchmarks/distributed_bench.py          # ~3 min on 2 CPU cores

Needs PostgreSQL binaries (``initdb``; the tests' throwaway-server helper starts one).
Writes benchmarks/results/distributed_bench.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import postgres_server  # noqa: E402
import torch  # noqa: E402
from search_helpers import SyntheticEvaluator, budget_between, make_space  # noqa: E402

from qpruner.search.run import run_search  # noqa: E402
from qpruner.search.search_run import SearchRun  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "distributed_bench.json"


def overhead(url: str, trials: int, method: str) -> float:
    """Milliseconds per trial of the search loop with a free evaluator."""
    space = make_space("joint", 8)
    run = SearchRun(
        space=space,
        evaluator=SyntheticEvaluator(8),
        budget=budget_between(space, 0.5),
        storage=url,
        method=method,
        trials=trials,
        study_name=f"overhead-{method}",
    )
    t0 = time.perf_counter()
    run_search(run, progress=False, log=lambda *_: None)
    return 1000 * (time.perf_counter() - t0) / trials


def throughput(url: str, study: str, workers: int, *, trials: int, work: int) -> float:
    """Finished trials per minute when ``workers`` processes fill one study.

    Timed from the first trial's start to the last one's end as the study records them, so
    process start-up (importing torch) is not counted.
    """
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import torch; torch.set_num_threads(1); "
        f"from search_helpers import worker; sys.exit(worker({url!r}, {trials}, method='random', "
        f"work={work}, layers=8, study={study!r}))"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a worker failed")
    import optuna

    done = [
        t for t in optuna.load_study(study_name=study, storage=url).get_trials() if t.state.name == "COMPLETE"
    ]
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    print(
        f"  {workers} worker(s): {len(done)} trials in {span.total_seconds():.1f} s "
        f"({time.perf_counter() - t0:.1f} s with start-up)"
    )
    return len(done) / (span.total_seconds() / 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead-trials", type=int, default=40)
    ap.add_argument("--trials", type=int, default=24, help="trials per throughput study")
    ap.add_argument("--work", type=int, default=3000, help="matmuls per trial (~1 s on one core)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="distributed_bench."))
    server = postgres_server.start_server()
    try:
        urls = {
            "sqlite": f"sqlite:///{tmp / 'study.db'}",
            "journal": f"journal://{tmp / 'study.log'}",
            "postgresql": server.create_db("bench"),
        }
        rows = []
        for name, url in urls.items():
            for method in ("random", "automixq"):
                ms = overhead(url, args.overhead_trials, method)
                rows.append({"storage": name, "method": method, "ms_per_trial": ms})
                print(f"{name:<10} {method:<9} {ms:7.1f} ms/trial")
        t = time.perf_counter()
        SyntheticEvaluator(8, work=args.work)(make_space("joint", 8).plan({}))
        job = time.perf_counter() - t
        pg = urls["postgresql"]
        tput = {w: throughput(pg, f"tput-{w}", w, trials=args.trials, work=args.work) for w in (1, 2)}
        print(f"one trial's job: {job:.2f} s; trials/min: 1 worker {tput[1]:.1f}, 2 workers {tput[2]:.1f}")
    finally:
        postgres_server.remove(server)
    table = ["| storage | searcher | loop overhead ms / trial |", "|---|---|---|"]
    table += [f"| {r['storage']} | {r['method']} | {r['ms_per_trial']:.1f} |" for r in rows]
    table += ["", "| workers (PostgreSQL) | finished trials / min | speed-up |", "|---|---|---|"]
    table += [f"| {w} | {tput[w]:.1f} | {tput[w] / tput[1]:.2f}× |" for w in (1, 2)]
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "overhead": rows,
                "job_seconds": job,
                "trials_per_minute": tput,
                "cpus": os.cpu_count(),
                "table": table,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
