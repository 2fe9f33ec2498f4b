"""Public functions raise the vdc_torch error family (each also the fitting builtin), never a bare ValueError."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import COWS

from vdc_torch import InvalidParameterError, VdcError
from vdc_torch.errors import InvalidTypeError
from vdc_torch.fingerprints import features, hashes, metrics


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import cv2

    image = cv2.imread(str(sorted(COWS.glob("*.png"))[0]), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.mark.parametrize(
    "call",
    [
        lambda im: hashes.compute_hash("sha1", im),
        lambda im: hashes.compute_hash("phash", im.astype(np.float32)),
        lambda im: features.extract(im, "surf"),
        lambda im: features.extract(im, "sift", max_features=0),
        lambda im: metrics.metric_matrix("psnr-ish", metrics.normalize_images([im]), metrics.normalize_images([im])),
        lambda im: metrics.normalize_images([im[:, :, 0].astype(np.uint16)]),
    ],
    ids=["unknown hash", "float image to a hash", "unknown extractor", "max_features 0", "unknown metric",
         "16-bit image to metrics"],
)
def test_bad_arguments_raise_the_error_family(photo: np.ndarray, call) -> None:
    with pytest.raises(VdcError) as caught:
        call(photo)
    assert isinstance(caught.value, (InvalidParameterError, InvalidTypeError)), type(caught.value)
    assert isinstance(caught.value, ValueError)  # what callers caught before still catches it


def test_a_wrong_type_is_still_a_type_error(photo: np.ndarray) -> None:
    with pytest.raises(TypeError) as caught:
        features.extract(photo.tolist(), "sift")
    assert isinstance(caught.value, VdcError)
