"""The config-space property over many drawn configs: each is refused at validation in one line naming a key, or
trains a tiny fit (in this process, on real BreastMNIST rows or the real CT slices) whose export serves what
`eval` wrote within 1e-4 per test image. Records the counts, the refusals by key, and every failure with its
overrides (the same property tests/test_config_space.py runs on ~20 configs).

    python -m bench.config_fuzz --cases 300 --seed 1 --name config-fuzz
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="config-fuzz")
    args = parser.parse_args()

    import keras
    from config_space import (fit_or_refused_by_data, overrides, refused_in_one_line, served_as_evaluated,
                              with_source, write_sources)
    from hypothesis import HealthCheck, given, seed, settings

    from medkeras.config import DataConfig, load_config
    from medkeras.data.sources import load_dataset
    from medkeras.errors import ConfigError

    work = Path(tempfile.mkdtemp(prefix="config-fuzz-"))
    sources = write_sources(work / "data", load_dataset(DataConfig(source="breastmnist")),
                            ROOT / "tests" / "fixtures" / "lung_pet_ct_dx_A0001")
    tally = collections.Counter()
    refusals, failures, gaps, seconds = collections.Counter(), [], [], []

    @seed(args.seed)
    @settings(max_examples=args.cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(drawn=overrides())
    def case(drawn):
        tally["drawn"] += 1
        try:
            cfg = load_config("demo", with_source(drawn, sources))
        except ConfigError as exc:
            try:
                message = refused_in_one_line(exc)
                refusals[message.split(":")[0]] += 1
                tally["refused"] += 1
            except AssertionError as bad:
                failures.append({"overrides": drawn, "stage": "refusal", "error": str(bad)})
            return
        out = work / f"case{tally['drawn']}"
        t0 = time.perf_counter()
        try:
            run = fit_or_refused_by_data(cfg, out / "run")
            if run is None:
                tally["refused by the data"] += 1
                return
            gaps.append(served_as_evaluated(run, out / "serving"))
            tally["run whole"] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is a finding, recorded with its config
            failures.append({"overrides": drawn, "stage": "fit/export/parity",
                             "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}",
                             "where": traceback.format_exc().strip().splitlines()[-3][:300]})
            print("FAILED", drawn, failures[-1]["error"], flush=True)
        finally:
            seconds.append(time.perf_counter() - t0)
            keras.backend.clear_session()
            shutil.rmtree(out, ignore_errors=True)
        print(f"{tally['drawn']}: {dict(tally)}, failures {len(failures)}", flush=True)

    case()
    shutil.rmtree(work, ignore_errors=True)
    result = {"cases": dict(tally), "failures": failures, "refused_by": dict(refusals.most_common()),
              "largest_gap": max(gaps, default=None), "seconds_per_run": round(sum(seconds) / max(len(seconds), 1), 1),
              "seed": args.seed}
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=1))
    for failure in failures:
        print(json.dumps(failure))
    print("saved", save(args.name, result))


if __name__ == "__main__":
    main()
