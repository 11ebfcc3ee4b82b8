"""drop_stderr_lines: lines that C code writes to fd 2 are dropped by pattern; the rest passes."""

import os

from narrator.tokenizers.stderr_filter import MPG123_NOTICE, drop_stderr_lines


def test_decoder_notes_are_dropped_even_when_written_in_pieces(capfd):
    with drop_stderr_lines(MPG123_NOTICE):
        os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: part2_3_length (96) too large\n")
        os.write(2, b"progress 50%\r")
        os.write(2, b"No")  # a note split over two writes is still one line to drop
        os.write(2, b"te: Skipped 24 bytes in input.\n")
        os.write(2, b"Noise floor measured\n")  # starts like a note, is not one
        os.write(2, b"Note: Trying to resync...")  # the last line, without its end
    assert capfd.readouterr().err == "progress 50%\rNoise floor measured\n"


def test_damage_notes_leave_out_the_tag_notes_and_the_one_a_seek_causes():
    from narrator.tokenizers.stderr_filter import damage_notes

    tag = "[src/libmpg123/id3.c:INT123_id3_to_utf8():394] warning: Weird tag size 107 for encoding 1"
    seek = "[src/libmpg123/layer3.c:INT123_do_layer3():1844] error: part2_3_length (1600) too large for available bit count (1480)"
    bad = "[src/libmpg123/layer3.c:INT123_do_layer3():1908] error: dequantization failed!"
    assert damage_notes([tag, seek], after_seek=True) == []  # a clean LibriVox chapter, read from its middle
    assert damage_notes([tag, seek], after_seek=False) == [seek.split("error: ")[1]]  # from the start, no seek
    assert damage_notes([tag, bad, seek], after_seek=True) == [bad.split("error: ")[1], seek.split("error: ")[1]]
