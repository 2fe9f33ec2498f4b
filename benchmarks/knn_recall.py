"""Recall of the IVF kNN index against exact flat search: python benchmarks/knn_recall.py DIR (ref.vdc/new.vdc of
speed_matching.make_tables at 1M, e.g. saved by its --memory-only run)."""
import sys
import time

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
import faiss
import numpy as np

from vdc_torch.decision.store.manifest import load_manifest
from vdc_torch.search import cascade as matching

ref, _ = load_manifest(sys.argv[1] + '/ref.vdc'); new, _ = load_manifest(sys.argv[1] + '/new.vdc')
rng = np.random.default_rng(5)
base = matching.table_coarse_vectors(ref.thumbs)
nq = 4000
open_q = matching.table_coarse_vectors(new.thumbs, np.sort(rng.choice(len(new), nq, replace=False)))
src = rng.choice(len(ref), nq, replace=False)
v = base[src]
s = rng.uniform(0.85, 1.0, size=(nq, 1)).astype(np.float32)
u = rng.normal(size=v.shape).astype(np.float32); u -= (u * v).sum(1, keepdims=True) * v
u /= np.linalg.norm(u, axis=1, keepdims=True)
near_q = np.ascontiguousarray(s * v + np.sqrt(1 - s * s) * u, dtype=np.float32)
flat = faiss.IndexFlatIP(64); flat.add(base)
t = time.time(); gt = {name: flat.search(q, 3) for name, q in (('open', open_q), ('near', near_q))}
print('flat search 8k', time.time() - t)
print('open: max sim of true top-1: median', np.median(gt['open'][0][:, 0]), 'max', gt['open'][0][:, 0].max())
del flat
t = time.time(); ivf = matching._coarse_index(ref.thumbs); print('ivf build', time.time() - t, 'nlist', ivf.nlist)
for nprobe in (4, 8, 16, 32, 64, 128):
    ivf.nprobe = nprobe
    for name, q in (('open', open_q), ('near', near_q)):
        t = time.time(); sims, ids = ivf.search(q, 3); dt = time.time() - t
        gs, gi = gt[name]
        hit_all = np.mean([len(set(gi[i]) & set(ids[i])) / 3 for i in range(nq)])
        rel = [(i, j) for i in range(nq) for j in range(3) if gs[i, j] >= 0.88]
        hit_rel = np.mean([gi[i, j] in ids[i] for i, j in rel]) if rel else float('nan')
        print(f'nprobe {nprobe:4d} {name}: recall top3 {hit_all:.3f}  recall top3 with sim>=0.88 {hit_rel:.4f} (n={len(rel)})  {dt/nq*1e6:.0f} us/query', flush=True)
