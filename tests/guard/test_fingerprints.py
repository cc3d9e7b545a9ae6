"""Fingerprints: stable under re-encoding and attack-like changes, distinct across faces,
secret (the salt decides everything), and empty for faces without texture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.guard.fingerprints import FingerprintKey, fingerprint, shared
from tests.guard.conftest import jpeg, noisy

KEY = FingerprintKey.from_salt("test-salt")
S, T = 20, 3  # the default hashes per face and match threshold


def test_jpeg90_of_a_crop_matches_an_unrelated_face_does_not(
    crops: dict[str, np.ndarray],
) -> None:
    for name, crop in crops.items():
        mine = fingerprint(crop, KEY, S)
        assert len(mine) == S
        assert shared(mine, fingerprint(jpeg(crop, 90), KEY, S)) > T, name
        assert shared(mine, fingerprint(noisy(crop, 1), KEY, S)) > T, name
        for other, crop2 in crops.items():
            # obama/obama2/obama3 are different photos of one man: still unrelated crops
            if other != name:
                assert shared(mine, fingerprint(crop2, KEY, S)) <= T, (name, other)


def test_relief_view_ignores_column_stripes(crops: dict[str, np.ndarray]) -> None:
    """Square starts from +-eps column stripes: the levels change, the relief does not."""
    crop = crops["obama"].astype(int)
    signs = np.random.default_rng(0).choice([-16, 16], (1, crop.shape[1], 3))
    striped = np.clip(crop + signs, 0, 255).astype(np.uint8)
    a, b = fingerprint(crops["obama"], KEY, S), fingerprint(striped, KEY, S)
    assert np.intersect1d(a.relief, b.relief).size > T
    assert shared(a, b) > T


def test_salt_changes_every_fingerprint(crops: dict[str, np.ndarray]) -> None:
    other = FingerprintKey.from_salt("another-salt")
    for crop in crops.values():
        a = fingerprint(crop, KEY, S)
        assert np.array_equal(a.hashes, fingerprint(crop, FingerprintKey.from_salt("test-salt"),
                                                     S).hashes)  # deterministic per salt
        b = fingerprint(crop, other, S)
        assert np.intersect1d(a.hashes, b.hashes).size == 0
        assert shared(b, fingerprint(jpeg(crop, 90), other, S)) > T  # still works salted


def test_flat_crop_has_no_fingerprint_and_matches_nothing() -> None:
    flat = np.full((128, 128, 3), 120, np.uint8)
    fp = fingerprint(flat, KEY, S)
    assert len(fp) == 0 and shared(fp, fp) == 0


def test_other_crop_sizes_are_brought_to_one_geometry(crops: dict[str, np.ndarray]) -> None:
    """A detector with a 256 input sees the same face: its fingerprint is the 128 one."""
    big = np.repeat(np.repeat(crops["biden"], 2, axis=0), 2, axis=1)  # area-shrinks back exactly
    a, b = fingerprint(crops["biden"], KEY, S), fingerprint(big, KEY, S)
    assert np.array_equal(a.hashes, b.hashes)


def test_key_hides_its_words_and_digests_files(tmp_path: Path) -> None:
    assert "secret" in repr(KEY) and str(KEY.words[0]) not in repr(KEY)
    f, g = tmp_path / "a.bin", tmp_path / "b.bin"
    f.write_bytes(b"same bytes")
    g.write_bytes(b"same bytes")
    assert KEY.digest_file(f) == KEY.digest_file(g)
    assert KEY.digest_file(f) != FingerprintKey.from_salt("x").digest_file(f)
