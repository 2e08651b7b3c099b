import numpy as np
import pytest

from ingest.grid import BaseResolution, ScaleError, concentric_boxes, grid


def test_resolve_magnification_and_mpp():
    svs = BaseResolution(magnification=20, mpp=0.499)
    assert svs.resolve(magnification=20).downsample == 1.0
    assert svs.resolve(magnification=5).downsample == 4.0
    assert svs.resolve(magnification=5).label == "5x"
    assert svs.resolve(mpp=1.0).downsample == pytest.approx(1.0 / 0.499)
    assert svs.resolve(mpp=1.0).label == "1mpp"


def test_conversion_between_mpp_and_magnification_when_one_is_missing():
    assert BaseResolution(None, 0.25).resolve(magnification=10).downsample == pytest.approx(4.0)
    assert BaseResolution(40, None).resolve(mpp=1.0).downsample == pytest.approx(4.0)


@pytest.mark.parametrize("base, kwargs, match", [
    (BaseResolution(None, None), {"magnification": 20}, "pass --base-mag or --base-mpp"),
    (BaseResolution(None, None), {"mpp": 0.5}, "pass --base-mpp or --base-mag"),
    (BaseResolution(20, 0.5), {"magnification": 40}, "level 0 is 20x; cannot tile at 40x"),
    (BaseResolution(20, 0.5), {"mpp": 0.25}, "cannot tile at 0.25"),
    (BaseResolution(20, 0.5), {"magnification": 20, "mpp": 0.5}, "exactly one"),
])
def test_errors(base, kwargs, match):
    with pytest.raises(ScaleError, match=match):
        base.resolve(**kwargs)


def test_grid_hand_computed():
    xs, ys = grid(1000, 500, 224)  # 4 columns (0..672), 2 rows (0, 224): 896 > 1000-224? no: 672+224=896 <= 1000
    assert list(xs) == [0, 224, 448, 672] * 2
    assert list(ys) == [0] * 4 + [224] * 4
    xs, ys = grid(448, 448, 224, stride0=112)  # overlapping: 3 x 3
    assert sorted(set(xs.tolist())) == [0, 112, 224] and len(xs) == 9
    assert grid(100, 100, 224)[0].size == 0
    xs, _ = grid(2220, 2967, 224 * 4)  # the CMU slide at 5x from 20x: 2 columns, 3 rows
    assert xs.size == 6


def test_concentric_boxes_share_the_centre():
    boxes = concentric_boxes(np.array([1000]), np.array([2000]), 224)
    for k, f in enumerate((1, 2, 4, 8)):
        x, y = boxes[0, k]
        assert (x + f * 224 / 2, y + f * 224 / 2) == (1112, 2112)
