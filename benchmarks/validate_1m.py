"""Validation speed on a large table: a 1,000,000 x 20 frame (16 numeric, 3 categorical columns
and a label). Times `DataValidator.validate_dataframe` (schema checks on one frame) and
`check_tables` (schema + empty/missing class + leakage + drift checks on a 70/15/15 split), median
of N runs. Run: .venv/bin/python benchmarks/validate_1m.py [ROWS] [N]"""
import statistics
import sys
import time

import numpy as np
import pandas as pd

from training_pipeline.config.schema import DriftConfig
from training_pipeline.data.layout import infer_tabular_schema
from training_pipeline.data.validation import DataValidator, check_tables


def make_frame(rows, seed=0):
    rng = np.random.default_rng(seed)
    cols = {f"x{i}": rng.normal(i, 1 + i / 10, rows) for i in range(16)}
    cols.update({f"c{i}": rng.choice(["red", "green", "blue", "black"], rows) for i in range(3)})
    cols["label"] = rng.choice(["a", "b", "c"], rows)
    return pd.DataFrame(cols)


def main(rows=1_000_000, n=3):
    df = make_frame(rows)
    schema = infer_tabular_schema(df, "label")
    validator = DataValidator(schema)
    cut1, cut2 = int(rows * 0.7), int(rows * 0.85)
    frames = {"train": df.iloc[:cut1], "val": df.iloc[cut1:cut2], "test": df.iloc[cut2:]}
    one, full = [], []
    for _ in range(n):
        t = time.perf_counter(); result = validator.validate_dataframe(df); one.append(time.perf_counter() - t)
        t = time.perf_counter(); issues = check_tables(frames, schema, DriftConfig()); full.append(time.perf_counter() - t)
    assert result["valid"] and not issues, (result["issues"], issues)
    print(f"frame {rows} x {df.shape[1]}: validate_dataframe median {statistics.median(one):.2f} s; "
          f"all split checks (leakage, drift) median {statistics.median(full):.2f} s")
    print(f"rows={rows} validate_dataframe_s={statistics.median(one):.3f} check_tables_s={statistics.median(full):.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
