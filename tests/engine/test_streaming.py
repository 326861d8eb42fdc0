"""Long-video chaining without models: chunk plan, audio windows and padding, trim, colour correction (spec §6)."""

from __future__ import annotations

import pytest
import torch

from engine.streaming import AudioTooShort, chunk_audio, match_colors, pad_track, plan_chunks, trim_to_audio

TOLERANCE = 1e-5


@pytest.mark.parametrize(
    "rows,frames",
    [
        (82, 79), (137, 134), (138, 135), (500, 497), (977, 974),  # n - 3
        (978, 942), (1000, 964), (1033, 997),  # n - 36
        (1034, 1000), (3000, 1000),  # the 1000-frame cap
    ],
)
def test_streaming_length_follows_the_reference(rows, frames):
    """n-3 up to 977 rows, n-36 for 978..1033 (cut to 1000 before the pad trim), then 1000 (spec §6.4)."""
    plan = plan_chunks([rows])
    assert plan.num_frames == frames
    assert plan.generated_frames == 81 + 56 * (len(plan.chunks) - 1)
    assert [c.start for c in plan.chunks] == [56 * i for i in range(len(plan.chunks))]
    assert [c.is_last for c in plan.chunks] == [False] * (len(plan.chunks) - 1) + [True]


def test_streaming_always_renders_at_least_two_chunks():
    plan = plan_chunks([82])
    assert len(plan.chunks) == 2
    first, second = plan.chunks
    assert (first.num_cond_frames, first.num_motion_latents, first.new_frames) == (1, 1, slice(0, None))
    assert (second.num_cond_frames, second.num_motion_latents, second.new_frames) == (25, 7, slice(25, None))


def test_clip_mode_is_one_chunk_of_81_frames():
    plan = plan_chunks([2000, 2000], max_frames=81)
    assert len(plan.chunks) == 1 and plan.chunks[0].is_last
    assert plan.num_frames == plan.generated_frames == 81
    assert plan.pad_rows == (0, 0)


def test_padding_includes_the_equality_case_and_is_per_track():
    plan = plan_chunks([137, 200, 136])  # the second chunk ends at exactly 137
    assert plan.pad_rows == (3, 0, 4)
    assert plan.num_frames == 137 - 3


def test_max_frames_caps_a_long_render():
    plan = plan_chunks([5000], max_frames=250)
    assert plan.chunks[-1].start + 81 >= 250 > plan.chunks[-2].start + 81
    assert plan.num_frames == 250


def test_short_audio_and_bad_geometry_are_refused():
    with pytest.raises(AudioTooShort) as raised:
        plan_chunks([200, 81])
    assert "81" in raised.value.admin_detail and "3.3 seconds" in raised.value.user_message
    with pytest.raises(ValueError):
        plan_chunks([200], frame_num=80)
    with pytest.raises(ValueError):
        plan_chunks([200], motion_frames=81)
    with pytest.raises(ValueError):
        plan_chunks([])


def test_pad_track_mirrors_the_tail_including_the_last_row():
    track = torch.arange(6.0)
    assert pad_track(track, 3).tolist() == [0, 1, 2, 3, 4, 5, 5, 4, 3]
    assert pad_track(track, 0) is track


def _row_ids(rows: int) -> torch.Tensor:
    """A track whose row r holds the value r everywhere: windows then show which rows were read."""
    return torch.arange(rows, dtype=torch.float32)[:, None, None].expand(rows, 2, 3).clone()


def test_audio_windows_are_five_rows_around_each_frame_clamped_at_the_start():
    plan = plan_chunks([150, 150])
    audio = chunk_audio([_row_ids(150), _row_ids(150)], plan.chunks[0], plan)
    assert audio.shape == (2, 81, 5, 2, 3)
    rows = audio[0, :, :, 0, 0]
    assert rows[0].tolist() == [0, 0, 0, 1, 2]
    assert rows[40].tolist() == [38, 39, 40, 41, 42]
    assert rows[80].tolist() == [78, 79, 80, 81, 82]


def test_last_chunk_reads_mirrored_padding_and_earlier_chunks_clamp():
    plan = plan_chunks([150, 120])  # chunks at 0, 56, 112; speaker 2 ends inside chunk 1
    assert plan.pad_rows == (46, 76)
    tracks = [_row_ids(150), _row_ids(120)]
    middle = chunk_audio(tracks, plan.chunks[1], plan)[1, :, :, 0, 0]
    assert middle[-1].tolist() == [119, 119, 119, 119, 119]  # clamped to speaker 2's own end
    last = chunk_audio(tracks, plan.chunks[2], plan)[0, :, :, 0, 0]
    # frame 112 + 38 = 150 is the first padded row: 149 again, then 148, ...
    assert last[38].tolist() == [148, 149, 149, 148, 147]


def test_trim_checks_the_generated_length():
    plan = plan_chunks([100])
    video = torch.zeros(3, plan.generated_frames, 2, 2)
    assert trim_to_audio(video, plan).shape[1] == plan.num_frames == 97
    with pytest.raises(ValueError):
        trim_to_audio(video[:, 1:], plan)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_colour_correction_matches_the_reference(strength, load_fixture, relative_error):
    fx = load_fixture("streaming/colors")
    corrected = match_colors(fx["frames"], fx["reference"], strength, frames_per_batch=2)
    assert corrected.dtype == torch.float32
    assert relative_error(corrected, fx[f"out_{strength:g}"]) <= TOLERANCE
    assert corrected.abs().max() <= 1.0  # any strength > 0 clips


def test_colour_correction_pulls_statistics_towards_the_reference():
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(3, 16, 16, generator=g) * 0.4 - 0.8  # dark
    frames = torch.rand(3, 4, 16, 16, generator=g) * 0.4 + 0.4  # bright
    corrected = match_colors(frames, reference)
    assert abs(corrected.mean() - reference.mean()) < 0.1 < abs(frames.mean() - reference.mean())
    assert match_colors(frames, reference, 0.0) is frames
    with pytest.raises(ValueError):
        match_colors(frames, reference, 1.5)
