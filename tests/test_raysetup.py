"""hbt.raysetup: the known library noise, and a failed Ray start as one line."""

from __future__ import annotations

from hbt.raysetup import LIBRARY_NOISE, RayStartError, is_library_noise


def test_every_dropped_pattern_says_why_and_hbt_lines_pass():
    assert all(why and pattern for pattern, why in LIBRARY_NOISE)
    assert is_library_noise("[2026-01-01 00:00:00] [WARNING] [real_accelerator.py:213:get_accelerator] Setting "
                            "accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
    assert is_library_noise("Reporting training result 1: TrainingReport(checkpoint=None, metrics={})")
    for line in ("[hbt] step 2/2 loss 3.1", "[hbt] encode: 10/20 texts (50%), 0:10 elapsed, ETA 0:10",
                 "error: data.languages: unknown key"):
        assert not is_library_noise(line), line


def test_a_failed_ray_start_is_one_line_with_the_likely_cause():
    local = str(RayStartError("local", RuntimeError("The current node timed out during startup.\nmore\nlines")))
    assert "\n" not in local and "The current node timed out during startup." in local
    assert "/dev/shm" in local and "Ray did not start" in local
    remote = str(RayStartError("10.0.0.1:6379", ConnectionError("could not connect")))
    assert "no Ray cluster answers at '10.0.0.1:6379'" in remote and "\n" not in remote
