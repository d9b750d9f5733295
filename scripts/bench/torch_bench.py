#!/usr/bin/env python3
"""PyTorch (and optionally ONNX Runtime) side of scripts/bench/run.sh.

Runs the AstroMAE re-created in scripts/parity/blocks (the original's class paths) with
the same weights file and the same inputs as `cai bench`, over the same threads and batch
sizes, and prints a table beside the `cai bench --json` report with the ratios.

    $VENV/bin/python scripts/bench/torch_bench.py --weights W.safetensors --cai cai.json \
        [--threads 1,2] [--batch 1,32,128,512] [--seconds 3] [--onnx] [--json-out F] [--no-table]
    $VENV/bin/python scripts/bench/torch_bench.py --table round1.json round2.json ...
    $VENV/bin/python scripts/bench/torch_bench.py --merge-cai OUT.json avx512=a.json avx2=b.json
    $VENV/bin/python scripts/bench/torch_bench.py --merge-fixtures OUT.json random=a.json trained=b.json
    $VENV/bin/python scripts/bench/torch_bench.py --add-onnx-path ROUND.json ONNX_BENCH.json

The second form prints one table from several rounds (each a --json-out file, which holds
that round's cai report too): every engine's best galaxies/s over the rounds, with the
range beside it. On a shared machine whose neighbours slow everything by tens of percent at
times, alternating rounds of cai and PyTorch and keeping each one's best compares both at
their least disturbed, where a single pass compares whatever moments each one happened to
get. It ends with the comparison the speed issue states: one thread, each engine at its best
batch size, against PyTorch f32, best over the rounds and round by round (with the median).

The third form joins `cai bench --json` reports of several kernel tiers (run.sh --kernels)
into one, each precision labelled with its tier ("f32 avx2"). --merge-fixtures does the same
for reports of one tier judged on several parity fixtures (run.sh --fixture): each precision
labelled with its fixture's name ("auto trained"), since `auto`'s mix and every reduced
precision's error depend on the fixture.

The fourth form adds to a round's --json-out file what `cai bench --model X.onnx --json`
measured in that round: cai's ONNX path as the engine "cai onnx" (run.sh --onnx), so that
the table and the headline put it beside PyTorch and ONNX Runtime round by round.

Inputs follow `cai bench`: image value i is ((i * 7919) % 1000) * 1e-3 (float32, NCHW),
magnitude i is 15 + i % 7. Speed is measured in wall time and in process CPU time
(`time.process_time`), as `cai bench` does; the load average is printed with each case.
"""
import argparse
import json
import os
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from blocks.model_vit_inception import ViT_Astro  # noqa: E402

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """state_dict from a safetensors file (the venv has no safetensors package)."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=DTYPES[info["dtype"]])
        out[key] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out, header.get("__metadata__", {})


def build_model(weights):
    sd, meta = read_safetensors(weights)
    heads = int(meta.get("heads", 3))
    model = ViT_Astro(num_heads=heads)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # conv2d_init and vis_inception.0 are one module; branch3 of block 8 is never used.
    missing = [k for k in missing
               if not k.startswith("inception_model.vis_inception.8.branch3.")
               and not k.startswith("inception_model.conv2d_init.")
               and not k.startswith("inception_model.vis_inception.0.")
               and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model


def inputs(n):
    i = np.arange(n * 5 * 32 * 32, dtype=np.int64)
    images = (((i * 7919) % 1000).astype(np.float32) * np.float32(1e-3)).reshape(n, 5, 32, 32)
    mags = (15 + (np.arange(n * 5) % 7)).astype(np.float32).reshape(n, 5)
    return torch.from_numpy(images), torch.from_numpy(mags)


def load1():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def timed(fn, batch, seconds):
    fn()  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    calls = 0
    while True:
        fn()
        calls += 1
        if time.perf_counter() - t0 >= seconds:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    g = calls * batch
    return {"galaxies": g, "wall_s": wall, "cpu_s": cpu, "galaxies_per_s": g / wall,
            "galaxies_per_cpu_s": g / cpu if cpu > 0 else None, "load1": load1()}


def onnx_session(model, path, threads):
    import onnxruntime as ort
    if not os.path.exists(path):
        im, mg = inputs(2)
        kw = {}
        try:
            torch.onnx.export(model, (im, mg), path, input_names=["image", "magnitudes"],
                              output_names=["z"], opset_version=17, dynamo=False,
                              dynamic_axes={"image": {0: "n"}, "magnitudes": {0: "n"}, "z": {0: "n"}},
                              **kw)
        except TypeError:
            torch.onnx.export(model, (im, mg), path, input_names=["image", "magnitudes"],
                              output_names=["z"], opset_version=17,
                              dynamic_axes={"image": {0: "n"}, "magnitudes": {0: "n"}, "z": {0: "n"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights")
    ap.add_argument("--cai", help="cai bench --json report to compare with")
    ap.add_argument("--threads", default=None)
    ap.add_argument("--batch", default=None)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--onnx", action="store_true", help="also ONNX Runtime (if installed)")
    ap.add_argument("--onnx-file", default=None)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--no-table", action="store_true", help="measure and write --json-out only")
    ap.add_argument("--table", nargs="+", metavar="ROUND_JSON",
                    help="print one table from these rounds' --json-out files (no measuring)")
    ap.add_argument("--merge-cai", nargs="+", metavar="OUT TIER=FILE",
                    help="join cai bench --json reports of kernel tiers into OUT (no measuring)")
    ap.add_argument("--merge-fixtures", nargs="+", metavar="OUT NAME=FILE",
                    help="join cai bench --json reports judged on several parity fixtures into OUT")
    ap.add_argument("--add-onnx-path", nargs=2, metavar=("ROUND_JSON", "ONNX_BENCH_JSON"),
                    help="add cai's ONNX path (cai bench --model X.onnx --json) to a round (no measuring)")
    args = ap.parse_args()
    if args.add_onnx_path:
        add_onnx_path(*args.add_onnx_path)
        return
    if args.merge_cai:
        merge_cai(args.merge_cai[0], args.merge_cai[1:])
        return
    if args.merge_fixtures:
        merge_cai(args.merge_fixtures[0], args.merge_fixtures[1:], check_tier=False)
        return
    if args.table:
        rounds = []
        for path in args.table:
            with open(path) as f:
                rounds.append(json.load(f))
        table(rounds)
        return
    if not args.weights:
        ap.error("--weights is required unless --table is given")

    cai = None
    if args.cai:
        with open(args.cai) as f:
            cai = json.load(f)
    if args.threads:
        threads = [int(t) for t in args.threads.split(",")]
    elif cai:
        threads = sorted({c["threads"] for c in cai["cases"]})
    else:
        threads = list(range(1, (os.cpu_count() or 1) + 1))
    if args.batch:
        batches = [int(b) for b in args.batch.split(",")]
    elif cai:
        batches = sorted({c["batch"] for c in cai["cases"]})
    else:
        batches = [1, 32, 128, 512]

    model = build_model(args.weights)
    torch.set_num_interop_threads(1)
    im_all, mg_all = inputs(max(batches + [8]))
    gflop = cai["gflop_per_galaxy"] if cai else 0.765
    peak = cai["fma_peak_gflops_per_core"] if cai else None

    with torch.inference_mode():
        torch.set_num_threads(1)
        z = model(im_all[:8], mg_all[:8]).reshape(-1).numpy()
    check = {"torch_z_first": z.tolist()}
    if cai:
        d = np.abs(z.astype(np.float64) - np.asarray(cai["z_first"], dtype=np.float64))
        check["max_abs_dz_vs_cai"] = float(d.max())
        print(f"same inputs and weights: max |z_cai - z_torch| over {len(d)} galaxies = {d.max():.2e}")

    sess = None
    engines = ["torch"]
    if args.onnx:
        try:
            import onnxruntime  # noqa: F401
            engines.append("onnxruntime")
        except ImportError:
            print("onnxruntime is not installed in this venv: skipping it")
    onnx_file = args.onnx_file or os.path.join(os.path.dirname(args.weights), "astromae.onnx")

    results = []
    for t in threads:
        torch.set_num_threads(t)
        if "onnxruntime" in engines:
            sess = onnx_session(model, onnx_file, t)
            if t == threads[0]:
                zo = sess.run(None, {"image": im_all[:8].numpy(), "magnitudes": mg_all[:8].numpy()})[0]
                check["max_abs_dz_onnx_vs_torch"] = float(np.abs(zo.reshape(-1) - z).max())
                print(f"ONNX Runtime vs torch: max |dz| = {check['max_abs_dz_onnx_vs_torch']:.2e}")
        for b in batches:
            im, mg = im_all[:b], mg_all[:b]

            def run_torch():
                with torch.inference_mode():
                    model(im, mg)
            r = timed(run_torch, b, args.seconds)
            r.update(engine="torch", threads=t, batch=b)
            results.append(r)
            if sess is not None:
                feed = {"image": im.numpy(), "magnitudes": mg.numpy()}
                r = timed(lambda: sess.run(None, feed), b, args.seconds)
                r.update(engine="onnxruntime", threads=t, batch=b)
                results.append(r)

    doc = {"torch": torch.__version__, "check": check, "results": results, "cai": cai,
           "gflop_per_galaxy": gflop, "fma_peak_gflops_per_core": peak}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=1)
    if not args.no_table:
        table([doc])


def best_of(samples):
    """The sample with the most galaxies/s, and the (min, max) of galaxies/s over all."""
    best = max(samples, key=lambda r: r["galaxies_per_s"])
    gs = [r["galaxies_per_s"] for r in samples]
    return best, (min(gs), max(gs))


def merge_cai(out, parts, check_tier=True):
    """Joins `cai bench --json` reports of kernel tiers (`TIER=FILE` each, as `CAI_KERNELS`
    names them) into one report whose precisions, cases and ViT-block figures are labelled
    with their tier ("f32 avx2"). The peak is the best any tier's probe measured (the AVX-512
    tier's probe runs on zmm, so it is the machine's peak where 512-bit FMAs are faster);
    the reference outputs come from the first tier. Exits with an error when cai ran another
    tier than the one asked for (it falls back when this CPU lacks it)."""
    docs = []
    for part in parts:
        tier, sep, path = part.partition("=")
        if not sep or not tier or not path:
            sys.exit(f"--merge-cai: expected LABEL=FILE, got {part!r}")
        with open(path) as f:
            doc = json.load(f)
        ran = str(doc.get("kernels", "")).lower()
        if check_tier and ran != tier.lower():
            sys.exit(f"cai ran the {doc.get('kernels')} kernels when asked for {tier} "
                     f"(CAI_KERNELS={tier}): this CPU lacks that tier ({path})")
        docs.append((tier, doc))
    if not docs:
        sys.exit("--merge-cai: no reports given")
    merged = dict(docs[0][1])
    for key in ("cases", "precisions", "vit_blocks"):
        merged[key] = [dict(x, precision=f"{x.get('precision', 'f32')} {tier}")
                       for tier, d in docs for x in d.get(key, [])]
    if check_tier:
        merged["kernels"] = "+".join(str(d.get("kernels")) for _, d in docs)
    for key in ("fma_peak_gflops_per_core", "fma_peak_after_gflops_per_core", "probe_drift"):
        vals = [d[key] for _, d in docs if d.get(key) is not None]
        merged[key] = max(vals) if vals else None
    with open(out, "w") as f:
        json.dump(merged, f)


def add_onnx_path(round_path, onnx_path):
    """Adds the ONNX path's cases of a `cai bench --model X.onnx --json` report to a round's
    results as the engine "cai onnx" (its native f32 cases are the round's "cai f32" already)."""
    with open(onnx_path) as f:
        onnx = json.load(f)
    with open(round_path) as f:
        rd = json.load(f)
    load = (onnx.get("load_after") or [None])[0]
    for c in onnx.get("cases", []):
        o = c.get("onnx")
        if not o:
            continue
        rd.setdefault("results", []).append(
            {"engine": "cai onnx", "threads": c["threads"], "batch": c["batch"],
             "galaxies_per_s": o["galaxies_per_s"], "galaxies_per_cpu_s": o.get("galaxies_per_cpu_s"),
             "load1": load})
    with open(round_path, "w") as f:
        json.dump(rd, f, indent=1)


def table(rounds):
    """Every cai precision beside each engine, ratios against PyTorch f32, best of the rounds."""
    gflop = next((r["gflop_per_galaxy"] for r in rounds if r.get("gflop_per_galaxy")), 0.765)
    # cai runs a little less than the original (the last block's fc2 on the pooled row only):
    # its GFLOP/s and peak% count what it ran, PyTorch's and ONNX Runtime's the original's.
    cai_gflop = next((r["cai"]["executed_gflop_per_galaxy"] for r in rounds
                      if (r.get("cai") or {}).get("executed_gflop_per_galaxy")), gflop)
    peaks = [r["fma_peak_gflops_per_core"] for r in rounds if r.get("fma_peak_gflops_per_core")]
    peak = max(peaks) if peaks else None
    samples = {}
    dz = {}
    for rd in rounds:
        for p in (rd.get("cai") or {}).get("precisions", []):
            dz[p["precision"]] = p
        for key, r in round_cases(rd):
            samples.setdefault(key, []).append(r)
    threads = sorted({k[0] for k in samples})
    batches = sorted({k[1] for k in samples})
    # cai's precisions in the order its report lists them (with --kernels, each tier's).
    listed = next(([p["precision"] for p in (r.get("cai") or {}).get("precisions", [])]
                   for r in rounds if (r.get("cai") or {}).get("precisions")), [])
    order = ([f"cai {p}" for p in listed or ("f32", "bf16", "int8", "int16")]
             + ["cai onnx", "torch", "onnxruntime"])
    w = max([10] + [len(k[2]) for k in samples])
    n = len(rounds)
    hdr = (f"{'threads':>7} {'batch':>5} {'engine':>{w}} {'gal/s':>8} {'gal/CPU-s':>9} {'GFLOP/s':>8} "
           f"{'peak%':>6} {'x torch':>7} {'x torch CPU':>11} {'load':>5}"
           + (f" {'gal/s range':>13}" if n > 1 else "") + "  |dz| max/mean vs f32")
    print()
    if n > 1:
        print(f"best of {n} alternating rounds (cai, then PyTorch/ONNX Runtime, per round)")
    print(f"f32 FMA peak per core (cai's probe{', best round' if n > 1 else ''}): {peak:.1f} GFLOP/s"
          if peak else "peak unknown")
    print(hdr)
    for t in threads:
        for b in batches:
            engines = [e for e in order if (t, b, e) in samples]
            engines += sorted(e for (tt, bb, e) in samples if (tt, bb) == (t, b) and e not in order)
            ref = best_of(samples[(t, b, "torch")])[0] if (t, b, "torch") in samples else None
            for eng in engines:
                best, (lo, hi) = best_of(samples[(t, b, eng)])
                gs, gc, ld = best["galaxies_per_s"], best.get("galaxies_per_cpu_s"), best.get("load1")
                ratio = gs / ref["galaxies_per_s"] if ref else None
                ratio_c = gc / ref["galaxies_per_cpu_s"] if ref and gc and ref.get("galaxies_per_cpu_s") else None
                g = cai_gflop if eng.startswith("cai ") else gflop
                pk = 100 * (gc or gs) * g / peak if peak else None
                d = dz.get(eng[4:], {}) if eng.startswith("cai ") else {}
                dd = d.get("dz_parity") or d.get("dz_bench")
                dzs = f"{dd['max']:.1e}/{dd['mean']:.1e}" if dd else ""
                spread = f" {f'{lo:.1f}-{hi:.1f}':>13}" if n > 1 else ""
                print(f"{t:>7} {b:>5} {eng:>{w}} {gs:>8.1f} {gc or 0:>9.1f} {gs * g:>8.1f} "
                      f"{pk if pk is not None else float('nan'):>5.1f}% "
                      f"{(f'{ratio:.2f}x' if ratio else '-'):>7} {(f'{ratio_c:.2f}x' if ratio_c else '-'):>11} "
                      f"{ld if ld is not None else float('nan'):>5.2f}{spread}  {dzs}")
    blocks = {}
    for rd in rounds:
        for vb in (rd.get("cai") or {}).get("vit_blocks", []):
            blocks.setdefault(vb["precision"], []).append(vb)
    for prec, vbs in blocks.items():
        vb = max(vbs, key=lambda v: v["peak_share"])
        shares = ", ".join(f"{100 * v['peak_share']:.1f}%" for v in vbs)
        print(f"cai {prec}: the ViT blocks alone, one thread: {vb['gflops_per_cpu_s']:.1f} "
              f"GFLOP per CPU-s = {100 * vb['peak_share']:.1f}% of the FMA probe's "
              f"{vb.get('probe_gflops_per_cpu_s', float('nan')):.1f} in the same {vb.get('rounds', '?')} alternating rounds"
              + (f" (rounds: {shares})" if len(vbs) > 1 else ""))
    drifts = [(rd.get("cai") or {}).get("probe_drift") for rd in rounds]
    if any(d is not None for d in drifts):
        print("cai's FMA probe moved by " + ", ".join(f"{100 * d:.0f}%" for d in drifts if d is not None)
              + " within " + ("each round" if n > 1 else "the run")
              + " (other load on this machine; figures from different moments differ by up to that much)")
    headline(rounds, [e for e in order if e != "torch"])
    print("peak% = GFLOP per CPU-second over the per-core f32 peak (int8 counts the same FLOPs);")
    print("x torch = galaxies/s over PyTorch f32's in the same case; |dz| on the parity fixtures if given, else on the bench inputs")


def round_cases(rd):
    """One round's cases as ((threads, batch, engine), record): cai's precisions as engines
    "cai f32" etc., beside PyTorch's and ONNX Runtime's results."""
    for c in (rd.get("cai") or {}).get("cases", []):
        yield ((c["threads"], c["batch"], f"cai {c.get('precision', 'f32')}"),
               {"galaxies_per_s": c["galaxies_per_s"],
                "galaxies_per_cpu_s": c.get("galaxies_per_cpu_s"),
                "load1": c.get("load1")})
    for r in rd.get("results", []):
        yield (r["threads"], r["batch"], r["engine"]), r


def round_best(rd, engine, threads=1):
    """(galaxies per CPU-s, batch) of `engine` at its best batch size in one round, or None."""
    rates = [(r.get("galaxies_per_cpu_s") or r["galaxies_per_s"], b)
             for (t, b, e), r in round_cases(rd) if e == engine and t == threads]
    return max(rates) if rates else None


def headline(rounds, engines):
    """The issue's comparison: one thread, each of `engines` at its best batch size, against
    PyTorch f32: best over all rounds, and round by round (each ratio pairs figures taken
    minutes apart, so the machine's drift between rounds does not enter it)."""
    torch = [round_best(rd, "torch") for rd in rounds]
    if not any(torch):
        return
    best_torch = max(t for t in torch if t)
    print(f"one thread, each engine at its best batch, galaxies per CPU-s against PyTorch f32's "
          f"{best_torch[0]:.1f} (batch {best_torch[1]}):")
    for eng in engines:
        per = [round_best(rd, eng) for rd in rounds]
        if not any(per):
            continue
        best = max(p for p in per if p)
        paired = [p[0] / t[0] for p, t in zip(per, torch) if p and t]
        line = f"  {eng}: {best[0]:.1f} (batch {best[1]}) = {best[0] / best_torch[0]:.2f}x"
        if len(paired) > 1:
            line += (f"; round by round {', '.join(f'{r:.2f}x' for r in paired)} "
                     f"(median {statistics.median(paired):.2f}x)")
        print(line)


if __name__ == "__main__":
    main()
