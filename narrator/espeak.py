"""libespeak-ng from the espeakng-loader wheel (the library and its voice data), through ctypes.

The sample book and the evaluation items both speak with it: no executable, no network. Its state
is global to the process (and not deterministic across syntheses within one: see ../shared/FACTS.md),
so each user builds one per process.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from narrator.errors import NarratorError

SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesize into the callback, return when done


def load_espeak(needed_by: str) -> tuple[ctypes.CDLL, str, int]:
    """The library with its argument types set, its voice data folder, and its sample rate once initialized.

    `needed_by` names what needs it in the one-line error when the wheel or its data is missing.
    """
    try:
        import espeakng_loader
    except ImportError:
        raise NarratorError(f"{needed_by} needs espeak-ng: pip install espeakng-loader") from None
    lib_path = espeakng_loader.get_library_path()
    data_path = str(Path(lib_path).parent / "espeak-ng-data")
    if not Path(data_path, "phontab").is_file():
        raise NarratorError(f"{data_path}: espeak-ng voice data is missing (reinstall espeakng-loader)")
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        raise NarratorError(f"{lib_path}: cannot load libespeak-ng ({e})") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    sample_rate = lib.espeak_Initialize(SYNCHRONOUS, 0, data_path.encode(), 0)
    if sample_rate <= 0:
        raise NarratorError(f"{data_path}: espeak-ng failed to initialize from this voice data")
    return lib, data_path, sample_rate
