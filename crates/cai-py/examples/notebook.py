# The cells of notebook.ipynb as a plain script (the tests run it: test_example_script).
# Usage: python notebook.py [WORKDIR]   (default: a new temporary folder)

# %% A model and a dataset: seeded weights as `cai model init`, galaxies as `cai synth`.
import sys
import tempfile
from pathlib import Path

import numpy as np

import cai

work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="cai-example-"))
work.mkdir(parents=True, exist_ok=True)
model_path = cai.init_model(work / "astromae.safetensors", seed=0)
data = cai.synth(64, seed=1)
print(data["images"].shape, data["magnitudes"].shape, cai.kernel_tier())

# %% Predict on NumPy arrays (the GIL is released while it computes).
model = cai.Model.load(str(model_path))
z = model.predict(data["images"], data["magnitudes"], batch_size=32)
print(model, z[:5])

# %% A run over partitions, as `cai synth` + `cai partition` + `cai run` would do it.
cai.synth(200, seed=2, out=work / "galaxies.safetensors")
print(cai.partition(work / "galaxies.safetensors", work / "parts", size="1MB"))
summary = cai.run(work / "parts", work / "results", model_path, batch_size=64)
print(summary["galaxies"], "galaxies,", round(summary["galaxies_per_s"], 1), "galaxies/s")

# %% Results as pandas.
df = cai.read_predictions(work / "results")
print(df.head())
assert len(df) == 200 and df["index"].is_unique
print((df["z_pred"] - df["z_true"]).abs().describe())

# %% The stats table and the HTML report.
print(cai.stats([work / "results"]).T)
print(cai.report(work / "results", work / "report.html"))
