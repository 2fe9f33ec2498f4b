"""The examples of visdatcompy's README, with ``visdatcompy`` replaced by ``vdc_torch``, on its example data.

Data: ``../shared/data/visdatcompy-examples/{cows,cows_duplicates}`` (10 video frames; 5 exact copies of four of
them, one under a second name) and ``../shared/data/exif-samples/jpg`` for EXIF (set ``VDC_SHARED`` to the shared
data folder to run it elsewhere). Files are only read; CSV files and heat maps go to a temporary folder.
Usage: python examples/seed_api.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDC_SHARED", REPO.parent / "shared" / "data"))
EXAMPLES = SHARED / "visdatcompy-examples"
EXIF = SHARED / "exif-samples" / "jpg"

try:
    import vdc_torch  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from vdc_torch import Dataset, FeatureExtractor, Hash, Image, Metrics, VisDatCompare


def main() -> None:
    if not (EXAMPLES / "cows").is_dir():
        sys.exit(f"error: {EXAMPLES} not found; set VDC_SHARED to the shared data folder")
    results = Path(tempfile.mkdtemp(prefix="vdc-seed-api-"))

    print("== Welcome to vdc_torch: Image and Dataset ==")
    img = Image(EXAMPLES / "cows" / "V00001.png")
    dts = Dataset(EXAMPLES / "cows")
    img.info()
    dts.info()

    print("\n== EXIF of an image ==")
    img = Image(EXIF / "Canon_40D.jpg")
    img.get_exif_data()
    for tag in ("Make", "Model", "DateTimeOriginal", "ExposureTime", "ComponentsConfiguration"):
        print(f"{tag}: {img.exif_data[tag]}")

    print("\n== EXIF of a dataset ==")
    dataset = Dataset(EXIF / "gps")
    dataset.get_exif_data()
    print(dataset.exif_data[["Filename", "FileExtension", "Make", "Model", "DateTimeOriginal"]].head())

    print("\n== Metrics ==")
    dataset1 = Dataset(EXAMPLES / "cows")
    dataset2 = Dataset(EXAMPLES / "cows_duplicates")
    metrics = Metrics(dataset1, dataset2, str(results / "metrics_results"))
    mae_result = metrics.mae(echo=True, to_csv=True)
    metrics.show(mae_result)  # shown on a display; without one saved as metrics_results/mae_heatmap.png
    print(mae_result.round(1))
    print("exact copies (pix2pix):", int(metrics.pix2pix().to_numpy().sum()))

    print("\n== SIFT, ORB, FAST ==")
    fext = FeatureExtractor(dataset1, dataset2, "sift")
    fext.find_similars()
    print(fext.sift_similars)
    print(fext.find_pairs()[["image1", "image2", "inliers"]])  # every copy with its original
    for name in ("orb", "fast"):
        other = FeatureExtractor(dataset1, dataset2, name)
        other.find_similars()
        print(name, getattr(other, f"{name}_similars"))

    print("\n== Hashes ==")
    hash = Hash(dataset1, dataset2, str(results))
    print(hash.find_similars("average", to_csv=True)[["image1", "image2", "distance"]])

    print("\n== VisDatCompare ==")
    compy = VisDatCompare(dataset1, dataset2)
    print("pix2pix duplicates:", compy.duplicates_finder.find_metrics_duplicates("pix2pix"))
    print("mse duplicates:", compy.duplicates_finder.find_metrics_duplicates("mse"))
    compy.duplicates_finder.clear_duplicates()
    print("sift similars:", compy.similars_finder.find_features_similars("sift"))
    compy.similars_finder.clear_similars()
    on_disk = len(list((EXAMPLES / "cows_duplicates").iterdir()))
    print(f"cows_duplicates left in memory: {len(dataset2)} images; on disk: {on_disk} files (untouched)")
    print(f"\nCSV files and heat map in {results}")


if __name__ == "__main__":
    main()
