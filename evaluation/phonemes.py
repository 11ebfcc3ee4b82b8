"""ARPAbet syllables as espeak-ng phoneme mnemonics (en-us), so a pseudoword is spoken from its phonemes.

The vowels follow espeak's own en-us transcriptions of the same words (`cat` k'at, `strut`
str'Vt, `bird` b'3:d, `happy` h'api); a vowel before an r that closes its syllable is one of
espeak's r-coloured vowels (`car` k'A@, `more` m'o@), as espeak itself says them. Phonemes are
joined with '|' so that two of them never read as a longer one (t|S is not tS).
"""

from __future__ import annotations

from .syllables import Syllable

CONSONANTS = {
    "B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k", "L": "l",
    "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t", "TH": "T", "V": "v",
    "W": "w", "Y": "j", "Z": "z", "ZH": "Z",
}
# stressed (1, 2) and unstressed (0) forms where espeak tells them apart
VOWELS = {
    "AA": ("A:", "A:"), "AE": ("a", "a"), "AH": ("V", "@"), "AO": ("O:", "O:"), "AW": ("aU", "aU"),
    "AY": ("aI", "aI"), "EH": ("E", "E"), "ER": ("3:", "3"), "EY": ("eI", "eI"), "IH": ("I", "I"),
    "IY": ("i:", "i"), "OW": ("oU", "oU"), "OY": ("OI", "OI"), "UH": ("U", "U"), "UW": ("u:", "u:"),
}
R_COLOURED = {"AA": "A@", "AO": "o@", "EH": "e@", "IH": "i@3", "IY": "i@3", "UH": "U@", "UW": "U@",
              "AY": "aI3", "AW": "aU3", "OW": "o@"}
STRESS_MARK = {"1": "'", "2": ",", "0": ""}
ESPEAK_VOWELS = frozenset(v for pair in VOWELS.values() for v in pair) | set(R_COLOURED.values()) | {"@L"}


def espeak_phonemes(syllables: tuple[Syllable, ...]) -> str:
    """The mnemonics espeak's [[...]] input takes for these syllables, stress marked before each vowel."""
    out: list[str] = []
    for n, s in enumerate(syllables):
        vowel, stress = s.nucleus[:-1], s.nucleus[-1]
        if vowel not in VOWELS or stress not in STRESS_MARK:
            raise ValueError(f"not an ARPAbet vowel: {s.nucleus}")
        out += [CONSONANTS[c] for c in s.onset]
        coda = list(s.coda)
        if coda[:1] == ["R"] and vowel in R_COLOURED:
            sound, coda = R_COLOURED[vowel], coda[1:]
        elif s.nucleus == "AH0" and coda == ["L"] and n == len(syllables) - 1:
            sound, coda = "@L", []  # espeak's syllabic l, as in its own `people` p'i:p@L
        else:
            sound = VOWELS[vowel][0 if stress in "12" else 1]
        out.append(STRESS_MARK[stress] + sound)
        out += [CONSONANTS[c] for c in coda]
    return "|".join(out)

def spoken_count(mnemonics: str) -> int:
    """How many phonemes espeak says for these: one each, plus the r it links an r-coloured vowel to a vowel with."""
    plain = [m.lstrip("',") for m in mnemonics.split("|")]
    linking = sum(1 for a, b in zip(plain, plain[1:]) if a in ("3", "3:") and b in ESPEAK_VOWELS)
    return len(plain) + linking


RESPELL = {
    "AA": "ah", "AE": "a", "AH": "u", "AO": "aw", "AW": "ow", "AY": "ie", "EH": "e", "ER": "er", "EY": "ay",
    "IH": "i", "IY": "ee", "OW": "oh", "OY": "oy", "UH": "oo", "UW": "oo",
    "B": "b", "CH": "ch", "D": "d", "DH": "th", "F": "f", "G": "g", "HH": "h", "JH": "j", "K": "k", "L": "l",
    "M": "m", "N": "n", "NG": "ng", "P": "p", "R": "r", "S": "s", "SH": "sh", "T": "t", "TH": "th", "V": "v",
    "W": "w", "Y": "y", "Z": "z", "ZH": "zh",
}


def respell(syllables: tuple[Syllable, ...]) -> str:
    """A rough spelling of a pseudoword for people reading a report, syllables joined by '-' (not what is spoken)."""
    return "-".join("".join(RESPELL[p.rstrip("012")] for p in s.phones) for s in syllables)
