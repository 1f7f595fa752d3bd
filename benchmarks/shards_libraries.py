"""How nbs/02f_data.shards chose its library: LitData vs WebDataset vs Mosaic Streaming on the same N 32x32 PNGs, one
process, median of 3: write time, random-order fetch by index (with and without the PNG decode), sequential read.
Not a project dependency: `pip install litdata webdataset mosaicml-streaming` first (mosaicml-streaming 0.13 asks for
numpy<2.2 and transformers<5: install it in a scratch venv, not the project's). A library that is not installed is skipped.
Run: .venv/bin/python benchmarks/shards_libraries.py [N] [litdata,webdataset,mosaic]"""
import importlib.util
import io, os, random, shutil, sys, tempfile, time, json
import numpy as np
from PIL import Image

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
RUNS = 3
root = tempfile.mkdtemp(prefix="shardlibs-", dir="/tmp")
rng = np.random.default_rng(0)

def png(pix):
    b = io.BytesIO(); Image.fromarray(pix).save(b, format="PNG"); return b.getvalue()

t = time.perf_counter()
base = rng.integers(0, 256, (N, 1, 1, 3), dtype=np.uint8)
grad = np.linspace(0, 1, 32)[None, :, None, None]
pix = (base * grad + rng.integers(0, 40, (N, 32, 32, 3))).clip(0, 255).astype(np.uint8)
samples = [(png(p), int(i % 10)) for i, p in enumerate(pix)]
print(f"encoded {N} PNGs in {time.perf_counter()-t:.1f}s, mean {np.mean([len(s[0]) for s in samples]):.0f} B")

def decode(b): 
    with Image.open(io.BytesIO(b)) as im: return np.asarray(im)

def timed(f):
    out = []
    for _ in range(RUNS):
        t = time.perf_counter(); f(); out.append(time.perf_counter() - t)
    return float(np.median(out))

order = list(range(N)); random.Random(0).shuffle(order)
res = {}

# folder baseline
fdir = os.path.join(root, "folder")
t = time.perf_counter()
paths = []
for i, (b, y) in enumerate(samples):
    d = os.path.join(fdir, str(y)); os.makedirs(d, exist_ok=True)
    p = os.path.join(d, f"{i:06d}.png"); open(p, "wb").write(b); paths.append(p)
res["folder"] = {"write_s": time.perf_counter() - t}
res["folder"]["random_s"] = timed(lambda: [decode(open(paths[i], "rb").read()) for i in order])
res["folder"]["seq_s"] = timed(lambda: [decode(open(p, "rb").read()) for p in paths])
print("folder", res["folder"], flush=True)

which = sys.argv[2].split(",") if len(sys.argv) > 2 else ["litdata", "webdataset", "mosaic"]
modules = {"litdata": "litdata", "webdataset": "webdataset", "mosaic": "streaming"}
for name in list(which):
    if importlib.util.find_spec(modules[name]) is None: print(f"{name} is not installed: skipped"); which.remove(name)
if "litdata" in which:
    from litdata.streaming.writer import BinaryWriter
    from litdata import StreamingDataset
    out = os.path.join(root, "litdata")
    t = time.perf_counter()
    w = BinaryWriter(out, chunk_bytes="16MB")
    for i, (b, y) in enumerate(samples): w[i] = {"image": b, "label": y}
    w.done(); w.merge()
    res["litdata"] = {"write_s": time.perf_counter() - t}
    print(json.load(open(os.path.join(out, "index.json")))["config"]["data_format"], os.listdir(out))
    ds = StreamingDataset(out, cache_dir=os.path.join(root, "litcache"))
    assert len(ds) == N
    s0 = ds[0]; print(type(s0), {k: type(v) for k, v in s0.items()}); assert s0["image"] == samples[0][0]
    res["litdata"]["random_s"] = timed(lambda: [decode(ds[i]["image"]) for i in order])
    res["litdata"]["seq_s"] = timed(lambda: [decode(ds[i]["image"]) for i in range(N)])
    res["litdata"]["random_fetch_only_s"] = timed(lambda: [ds[i]["image"] for i in order])
    print("litdata", res["litdata"], flush=True)
    # the encoding 02f_data.shards uses: PNG bytes as a 1-D uint8 array (no Arrow row footer), read item by item
    out = os.path.join(root, "litdata_u8")
    t = time.perf_counter()
    w = BinaryWriter(out, chunk_bytes="16MB")
    for i, (b, y) in enumerate(samples): w[i] = {"png": np.frombuffer(b, np.uint8), "label": y}
    w.done(); w.merge()
    res["litdata_u8"] = {"write_s": time.perf_counter() - t}
    print(json.load(open(os.path.join(out, "index.json")))["config"]["data_format"])
    ds = StreamingDataset(out, batch_decode=0)
    assert ds[0]["png"].tobytes() == samples[0][0]
    res["litdata_u8"]["random_s"] = timed(lambda: [decode(ds[i]["png"].tobytes()) for i in order])
    res["litdata_u8"]["seq_s"] = timed(lambda: [decode(ds[i]["png"].tobytes()) for i in range(N)])
    res["litdata_u8"]["random_fetch_only_s"] = timed(lambda: [ds[i]["png"] for i in order])
    print("litdata_u8", res["litdata_u8"], flush=True)

if "webdataset" in which:
    import webdataset as wds
    out = os.path.join(root, "wds"); os.makedirs(out)
    t = time.perf_counter()
    with wds.ShardWriter(os.path.join(out, "shard-%06d.tar"), maxsize=16_000_000, verbose=0) as w:
        for i, (b, y) in enumerate(samples): w.write({"__key__": f"{i:06d}", "png": b, "cls": str(y).encode()})
    res["webdataset"] = {"write_s": time.perf_counter() - t}
    urls = sorted(os.path.join(out, f) for f in os.listdir(out))
    def seq():
        n = 0
        for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False): decode(s["png"]); n += 1
        assert n == N
    res["webdataset"]["seq_s"] = timed(seq)
    res["webdataset"]["random_s"] = None  # no random access: tar streams
    print("webdataset", res["webdataset"], flush=True)

if "mosaic" in which:
    from streaming import MDSWriter, StreamingDataset as MDS
    out = os.path.join(root, "mds")
    t = time.perf_counter()
    with MDSWriter(out=out, columns={"image": "bytes", "label": "int"}, size_limit="16mb", hashes=["sha1"]) as w:
        for b, y in samples: w.write({"image": b, "label": y})
    res["mosaic"] = {"write_s": time.perf_counter() - t}
    ds = MDS(local=out, shuffle=False, batch_size=1)
    assert len(ds) == N and ds[0]["image"] == samples[0][0]
    res["mosaic"]["random_s"] = timed(lambda: [decode(ds[i]["image"]) for i in order])
    res["mosaic"]["seq_s"] = timed(lambda: [decode(ds[i]["image"]) for i in range(N)])
    res["mosaic"]["random_fetch_only_s"] = timed(lambda: [ds[i]["image"] for i in order])
    print("mosaic", res["mosaic"], flush=True)

for k, v in res.items():
    print(k, " ".join(f"{m}={x:.3f}" if x else f"{m}=n/a" for m, x in v.items()),
          " ".join(f"{m.replace('_s','')}_samples_per_s={N/x:,.0f}" for m, x in v.items() if x and m != "write_s"))
shutil.rmtree(root, ignore_errors=True)
