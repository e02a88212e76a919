"""Local SparkSession start, with and without the JVM class archive (`fruits.spark`).

Each measurement is a fresh Python process (a JVM starts once per process): seconds to a
ready session, then to the result of a first tiny job. Run on an idle machine:

    .venv/bin/python bench/session_start.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from featurize import machine  # bench/featurize.py: CPU model, cores, load average

CHILD = """
import json, time
t = time.time()
from fruits.spark import get_spark
spark = get_spark()
t1 = time.time()
spark.range(1000).selectExpr("sum(id)").collect()
print(json.dumps({"session": t1 - t, "first_job": time.time() - t1}))
"""


def measure(env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as cache:
        base = {**os.environ, "FRUITS_CACHE": cache}
        measure(base)  # writes the archive when its JVM exits
        rows = []
        for _ in range(args.repeats):
            rows.append(("no archive", measure({**base, "FRUITS_JVM_ARCHIVE": "0"})))
            rows.append(("archive", measure(base)))
    print(f"{'variant':<12} {'session s':>10} {'first job s':>12} {'total s':>8}")
    for name in ("no archive", "archive"):
        got = [r for n, r in rows if n == name]
        s = sorted(r["session"] for r in got)[len(got) // 2]
        j = sorted(r["first_job"] for r in got)[len(got) // 2]
        print(f"{name:<12} {s:>10.2f} {j:>12.2f} {s + j:>8.2f}")
    print("(medians of", args.repeats, "fresh processes each)")


if __name__ == "__main__":
    main()
