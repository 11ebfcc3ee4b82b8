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
