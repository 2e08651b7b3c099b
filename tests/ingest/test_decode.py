import numpy as np
import pytest
from PIL import Image

from ingest.decode import DecodeError, decode_file, fit, read_size
from tests.ingest.bad_files import rgb, write_corrupt_png, write_png16_rgb, write_truncated_png

SIZE = (46, 70)


def test_plain_rgb_round_trips(tmp_path):
    img = rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = decode_file(str(tmp_path / "a.png"), SIZE, resize=False)
    assert np.array_equal(out.image, img) and out.orig_size == SIZE and out.notes == []


@pytest.mark.parametrize("writer, reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, I am not a picture"), "not an image file"),
    (write_truncated_png, "corrupt or truncated"),
    (write_corrupt_png, "corrupt or truncated"),
    (lambda p: Image.fromarray(rgb()[..., 0]).save(p), "grayscale image"),
    (lambda p: Image.fromarray(np.full(SIZE, 40000, np.uint16)).save(p), "16-bit/integer grayscale"),
    (lambda p: Image.fromarray(np.dstack([rgb(), np.full(SIZE, 128, np.uint8)])).save(p), "transparent pixels"),
    (lambda p: Image.fromarray(rgb(100, 100)).save(p), "unexpected image size 100x100"),
])
def test_bad_files_raise_one_line_reason(tmp_path, writer, reason):
    path = tmp_path / "bad.png"
    writer(path)
    with pytest.raises(DecodeError, match=reason) as info:
        decode_file(str(path), SIZE, resize=False)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="cannot read file"):
        decode_file(str(tmp_path / "nope.png"), SIZE, resize=False)


def test_opaque_rgba_and_16bit_rgb_are_converted_with_a_note(tmp_path):
    img = rgb()
    Image.fromarray(np.dstack([img, np.full(SIZE, 255, np.uint8)])).save(tmp_path / "rgba.png")
    out = decode_file(str(tmp_path / "rgba.png"), SIZE, resize=False)
    assert np.array_equal(out.image, img) and "RGBA image converted" in out.notes[0]
    arr16 = write_png16_rgb(tmp_path / "deep.png")
    out = decode_file(str(tmp_path / "deep.png"), SIZE, resize=False)
    assert np.array_equal(out.image, (arr16 >> 8).astype(np.uint8)) and "16-bit PNG" in out.notes[0]


def test_near_size_is_padded_without_resampling_and_keeps_orig_size(tmp_path):
    img = rgb(456, 700)
    Image.fromarray(img).save(tmp_path / "short.png")
    out = decode_file(str(tmp_path / "short.png"), (460, 700), resize=False)
    assert out.image.shape == (460, 700, 3) and out.orig_size == (456, 700)
    assert np.array_equal(out.image[2:458], img)  # original pixels untouched, 2 rows of padding each side
    assert "fitted to 700x460" in out.notes[0]


def test_resize_mode_resizes_but_refuses_to_distort():
    small, note = fit(rgb(460, 700), (224, 341), resize=True)
    assert small.shape == (224, 341, 3) and note is None
    with pytest.raises(DecodeError, match="aspect ratio"):
        fit(rgb(460, 700), (224, 224), resize=True)


def test_read_size(tmp_path):
    Image.fromarray(rgb(30, 40)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("x")
    assert read_size(str(tmp_path / "a.png")) == (30, 40)
    assert read_size(str(tmp_path / "b.png")) is None
