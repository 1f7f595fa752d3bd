"""The hostile table inputs of tests/test_hostile_inputs.py (see README.md). The large CSVs are written at test
time (`generate(out_dir)` returns {name: path}); the small Parquet files are committed (`generate.py --small`)."""
import sys
from pathlib import Path

WIDE = 10**6                  # columns of the wide CSVs: a hundred times the 10,000 `tp prepare` takes
LONG_LINE = 17 * 2**20        # bytes of one CSV line: past the 16 MiB bound


def _writer(out_dir, paths: dict):
    out = Path(out_dir); out.mkdir(parents=True, exist_ok=True)
    def put(name, data: bytes):
        (out / name).write_bytes(data); paths[name] = out / name
    return out, put


def generate(out_dir) -> dict:
    "The large inputs, written into `out_dir`: {name: path}."
    paths = {}
    out, put = _writer(out_dir, paths)
    header = ",".join(f"c{i}" for i in range(WIDE)).encode()
    put("wide_header_only.csv", header + b"\n")
    put("wide_four_rows.csv", header + b"\n" + b"".join(b",".join([b"1"] * WIDE) + b"\n" for _ in range(4)))
    put("long_line.csv", b"a,b,label\n1,2,x\n3," + b"9" * LONG_LINE + b",y\n")
    return paths


def generate_small(out_dir) -> dict:
    "The small inputs (committed beside this script)."
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths = {}
    out, put = _writer(out_dir, paths)
    columns = {"struct_column": pa.array([{"x": 1, "y": "a"}] * 4), "list_column": pa.array([[1, 2], [3], [], [4]]),
               "map_column": pa.array([[("k", 1)]] * 4, type=pa.map_(pa.string(), pa.int64())),
               "binary_column": pa.array([b"\x00\x01", b"\xff", b"", b"x"])}
    for name, column in columns.items():
        table = pa.table({"a": [1.0, 2.0, 3.0, 4.0], name: column, "label": ["x", "y", "x", "y"]})
        pq.write_table(table, out / f"{name}.parquet")
        paths[f"{name}.parquet"] = out / f"{name}.parquet"
    put("not_parquet.parquet", b"a,label\n1,x\n2,y\n")
    # 76 bytes whose footer claims a 2 GiB schema
    put("huge_footer.parquet", b"PAR1" + b"\x00" * 64 + (2**31).to_bytes(4, "little") + b"PAR1")
    return paths


if __name__ == "__main__":
    if sys.argv[1:2] == ["--small"]: made = generate_small(Path(__file__).parent)
    else: made = generate(sys.argv[1] if len(sys.argv) > 1 else ".")
    for path in made.values(): print(path)
