"""English: numbers, dates, times, money, units and abbreviations written the way they are said.

num2words spells every number (cardinal, ordinal, year).  What no library at this cost covers
is deciding *which* reading a token gets ("4:30" is a time, "555-1234" a phone number, "Henry
VIII" a regnal ordinal), so those rules are here, one pass each, in the order of
:data:`_PASSES`: specific shapes first, plain cardinals last.  Each rule has rows in
tests/test_text_normalise.py.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from num2words.lang_EN import Num2Word_EN

from .patterns import compile_rule


_SPELLER = Num2Word_EN()

#: Plain integers longer than this are read digit by digit: an amount that large is written
#: with separators or "billion"; a bare run of ten digits is a phone number or an identifier.
MAX_CARDINAL_DIGITS = 9
#: Past num2words' largest name (10**306 and up it raises OverflowError) even a number written
#: with separators is read digit by digit; a failing rule would leave the whole text unnormalised.
MAX_NAMED_DIGITS = len(str(_SPELLER.MAXVAL)) - 1

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=4096)
def cardinal(value: int) -> str:
    """num2words' cardinal without its commas ("one million two hundred ..."): a comma is a clause break to the chunker."""
    return _SPELLER.to_cardinal(value).replace(",", "")


@lru_cache(maxsize=1024)
def ordinal(value: int) -> str:
    return _SPELLER.to_ordinal(value).replace(",", "")


@lru_cache(maxsize=1024)
def year(value: int) -> str:
    return _SPELLER.to_year(value).replace("oh-", "oh ")


def digits(text: str) -> str:
    """'0042' -> 'zero zero four two'."""
    return " ".join(_DIGITS[int(c)] for c in text if "0" <= c <= "9")


def number(text: str) -> str:
    """An unsigned integer or decimal as written ("1,234", "3.50", "0042"), in words."""
    whole, _, fraction = text.partition(".")
    separated = "," in whole
    whole = whole.replace(",", "")
    if not whole:
        words = ""
    elif (len(whole) > 1 and whole[0] == "0") or (len(whole) > MAX_CARDINAL_DIGITS and not separated) \
            or len(whole) > MAX_NAMED_DIGITS:
        words = digits(whole)
    else:
        words = cardinal(int(whole))
    if fraction:  # every digit said, trailing zeros too: "3.50" is "three point five zero"
        words = f"{words} point {digits(fraction)}".strip()
    return words


def _plural(word: str, value: str) -> str:
    if value in ("1", "one") or word.endswith("hertz"):
        return word
    return _PLURALS.get(word, word + "s")


_PLURALS = {"foot": "feet", "penny": "pence", "yen": "yen", "inch": "inches"}

# -- abbreviations ---------------------------------------------------------------------------------

#: Always followed by a name, so the full stop is never also a sentence end.
_TITLES = {"Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor", "Capt": "Captain", "Gen": "General",
           "Lt": "Lieutenant", "Col": "Colonel", "Sgt": "Sergeant", "Gov": "Governor", "Sen": "Senator",
           "Rep": "Representative", "Rev": "Reverend", "Mt": "Mount", "Ft": "Fort"}
#: May end a sentence: the full stop stays when it does.
_WORDS = {"Jr": "Junior", "Sr": "Senior", "vs": "versus", "etc": "et cetera", "approx": "approximately",
          "Inc": "Incorporated", "Ltd": "Limited", "Corp": "Corporation", "Ave": "Avenue", "Blvd": "Boulevard",
          "Rd": "Road", "Dept": "Department", "Univ": "University", "est": "established"}

_TITLE_RE = compile_rule(r"\b(" + "|".join(_TITLES) + r")\.(?=\s+[A-Z])", first=r"[A-Z]")
_WORD_RE = compile_rule(r"\b(" + "|".join(_WORDS) + r")\.(?=(\s+\S)?)", first=r"[A-Za-z]")
_DOCTOR_SAINT_RE = compile_rule(r"\b(Dr|St)\.(?=(\s+[A-Z])?)(?=(\s+\S)?)", first=r"[DS]")
_LATIN_RE = compile_rule(r"\b(e\.g|i\.e)\.(?=(\s+\S)?)", first=r"[ei]")
#: Before a number: "Vol. 3", "Fig. 2", "Ch. IV".
_NUMBERED = {"Vol": "Volume", "Ch": "Chapter", "Fig": "Figure", "Eq": "Equation", "Ex": "Example", "Pt": "Part"}
_NUMBERED_RE = compile_rule(r"\b(" + "|".join(_NUMBERED) + r")\.(?=\s*(?:\d|[IVXL]+\b))", first=r"[A-Z]")
_NUMBER_SIGN_RE = compile_rule(r"\b(No|no|Nos|nos)\.\s*(?=\d)|#(?=\d)", first=r"[Nn#]")


def _sentence_dot(match: re.Match[str], words: str, follower: int) -> str:
    """Keep a full stop that also ends a sentence (end of text, or a capital follows)."""
    after = match.group(follower)
    ends = after is None or after.lstrip()[:1].isupper()
    return words + "." if ends else words


def _abbreviations(text: str) -> str:
    text = _TITLE_RE.sub(lambda m: _TITLES[m.group(1)], text)
    # Dr./St. before a name are Doctor/Saint; after one ("Elm St.") they are Drive/Street.
    text = _DOCTOR_SAINT_RE.sub(
        lambda m: ({"Dr": "Doctor", "St": "Saint"}[m.group(1)] if m.group(2)
                   else _sentence_dot(m, {"Dr": "Drive", "St": "Street"}[m.group(1)], 3)), text)
    text = _LATIN_RE.sub(lambda m: _sentence_dot(m, {"e.g": "for example", "i.e": "that is"}[m.group(1)], 2), text)
    text = _WORD_RE.sub(lambda m: _sentence_dot(m, _WORDS[m.group(1)], 2), text)
    text = _NUMBERED_RE.sub(lambda m: _NUMBERED[m.group(1)], text)
    text = _NUMBER_SIGN_RE.sub("number ", text)
    return text.replace("&", " and ").replace("  and  ", " and ")


# -- shapes ----------------------------------------------------------------------------------------

_NUM = r"\d{1,3}(?:,\d{3})+|\d+"  # 1,234,567 or 1234567
_NUM_DEC = rf"(?:{_NUM})(?:\.\d+)?"

_PHONE_RE = compile_rule(
    r"(?<![\w+.-])(\+\d{1,3}[\s.-]?)?(\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w-])"  # (555) 123-4567, +1 555 123 4567
    r"|(?<![\w.-])\d{3}-\d{4}(?![\w-])"  # 555-1234
    r"|(?<![\w.-])\d{1,4}(?:-\d{2,4}){2,}(?![\w-])"  # 1-800-555-1234, 4111-1111-1111-1111
    r"|(?<![\w.-])\+?0\d{1,4}(?: \d{2,4}){2,}(?![\w-])"  # 020 7946 0958: space-separated only from a leading 0
, first=r"[+(\d]")


def _phone(match: re.Match[str]) -> str:
    groups = re.findall(r"\+?\d+", match.group(0))
    if match.group(0)[:1] != "+" and sum(len(g) for g in groups) < 7:
        return match.group(0)  # "10 20 30": a list of numbers, not a phone number
    return ", ".join(("plus " if g[0] == "+" else "") + digits(g) for g in groups)


_CURRENCIES = {"$": ("dollar", "cent"), "€": ("euro", "cent"), "£": ("pound", "penny"), "¥": ("yen", None)}
_MAGNITUDES = {"k": "thousand", "K": "thousand", "m": "million", "M": "million", "mn": "million", "b": "billion",
               "bn": "billion", "B": "billion", "thousand": "thousand", "million": "million", "billion": "billion",
               "trillion": "trillion"}
_MONEY_RE = compile_rule(
    rf"(?<![\w.])([$€£¥])\s?({_NUM})(?:\.(\d+))?(?:\s?(thousand|million|billion|trillion|bn|mn|[kKmMbB])\b)?"
, first=r"[$€£¥]")


def _money(match: re.Match[str]) -> str:
    symbol, whole, fraction, magnitude = match.groups()
    unit, subunit = _CURRENCIES[symbol]
    if magnitude:  # "$2.5 million": two point five million dollars
        amount = number(whole + ("." + fraction if fraction else ""))
        return f"{amount} {_MAGNITUDES[magnitude]} {_plural(unit, '')}"
    if fraction is None or subunit is None or len(fraction) != 2:
        amount = number(whole + ("." + fraction if fraction else ""))
        return f"{amount} {_plural(unit, amount)}"
    units, cents = int(whole.replace(",", "")), int(fraction)
    said = []
    if units or not cents:
        said.append(f"{number(whole)} {_plural(unit, str(units))}")
    if cents:
        said.append(f"{cardinal(cents)} {_plural(subunit, str(cents))}")
    return " and ".join(said)


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"Sept": "September"} | {m: m for m in _MONTHS}
_MONTH_ALT = r"(?:" + "|".join(sorted(_MONTH_ABBR, key=len, reverse=True)) + r")"
_ISO_DATE_RE = compile_rule(r"(?<![\d.-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d-])", first=r"\d")
_SLASH_DATE_RE = compile_rule(r"(?<![\d/.])(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?![\d/])", first=r"\d")
_MONTH_DAY_RE = compile_rule(rf"\b({_MONTH_ALT})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:(,?\s+)(\d{{4}})\b)?", first=r"[A-Z]")
_DAY_MONTH_RE = compile_rule(rf"(?<!\w)(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\b(?:\.?(,?\s+)(\d{{4}})\b)?", first=r"\d")


def _date_words(y: int | None, m: int, d: int) -> str | None:
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    said = f"{_MONTHS[m - 1]} {ordinal(d)}"
    return f"{said}, {year(y)}" if y is not None else said


def _iso_date(match: re.Match[str]) -> str:
    return _date_words(int(match.group(1)), int(match.group(2)), int(match.group(3))) or match.group(0)


def _slash_date(match: re.Match[str]) -> str:
    """m/d/y as in the US, unless the first number cannot be a month (then d/m/y); 'yy' is 20yy below 50."""
    first, second, y = int(match.group(1)), int(match.group(2)), match.group(3)
    full = int(y) if len(y) == 4 else (2000 + int(y) if int(y) < 50 else 1900 + int(y))
    m, d = (first, second) if first <= 12 else (second, first)
    return _date_words(full, m, d) or match.group(0)


def _month_day(match: re.Match[str]) -> str:
    month, day, gap, y = match.groups()
    if not 1 <= int(day) <= 31:
        return match.group(0)
    said = f"{_MONTH_ABBR[month]} {ordinal(int(day))}"
    return said + (f"{gap}{year(int(y))}" if y else "")


def _day_month(match: re.Match[str]) -> str:
    day, month, gap, y = match.groups()
    if not 1 <= int(day) <= 31:
        return match.group(0)
    the = "" if match.string[max(0, match.start() - 4):match.start()].lower() == "the " else "the "
    said = f"{the}{ordinal(int(day))} of {_MONTH_ABBR[month]}"
    return said + (f"{gap}{year(int(y))}" if y else "")


_AMPM = r"(?:\s?([AaPp])\.?[Mm]\b(\.)?)"
_TIME_RE = compile_rule(rf"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?![\d:]){_AMPM}?", first=r"\d")
_HOUR_AMPM_RE = compile_rule(rf"(?<![\d:.,])(1[0-2]|0?[1-9])(?![\d:]){_AMPM}", first=r"\d")


def _ampm(match: re.Match[str], letter: str, dot: str | None) -> str:
    said = " AM" if letter in "Aa" else " PM"
    if dot:  # "p.m." that also ends the sentence keeps its full stop
        rest = match.string[match.end():]
        if not rest.strip() or rest.lstrip()[:1].isupper():
            said += "."
    return said


def _time(match: re.Match[str]) -> str:
    hour, minute, second, letter, dot = match.groups()
    h, m = int(hour), int(minute)
    if letter is None and h == 0:
        said = f"twelve {_minutes(m)}".strip() + " AM"  # "00:30" is said "twelve thirty AM"
    elif letter is None and h > 12 and m == 0:
        said = f"{cardinal(h)} hundred"  # "14:00": fourteen hundred
    elif letter is None and m == 0:
        said = f"{cardinal(h)} o'clock"
    else:
        said = f"{cardinal(h)} {_minutes(m)}".strip()
    if second is not None and int(second):
        said += f" and {cardinal(int(second))} {_plural('second', second.lstrip('0'))}"
    if letter is not None:
        said += _ampm(match, letter, dot)
    return said


def _minutes(m: int) -> str:
    return "" if m == 0 else f"oh {cardinal(m)}" if m < 10 else cardinal(m)


def _hour_ampm(match: re.Match[str]) -> str:
    return cardinal(int(match.group(1))) + _ampm(match, match.group(2), match.group(3))


_PERCENT_RE = compile_rule(rf"(?<![\w.])({_NUM_DEC})\s?%", first=r"\d")


def _percent(match: re.Match[str]) -> str:
    return f"{number(match.group(1))} percent"


#: symbol -> (singular, plural); longest alternatives first in the pattern.
_UNITS = {
    "km/h": "kilometer per hour", "kph": "kilometer per hour", "mph": "mile per hour", "m/s": "meter per second",
    "km": "kilometer", "cm": "centimeter", "mm": "millimeter", "m": "meter", "mi": "mile", "ft": "foot",
    "yd": "yard", "kg": "kilogram", "mg": "milligram", "g": "gram", "lbs": "pound", "lb": "pound", "oz": "ounce",
    "ml": "milliliter", "mL": "milliliter", "L": "liter", "l": "liter",
    "°C": "degree Celsius", "℃": "degree Celsius", "°F": "degree Fahrenheit", "℉": "degree Fahrenheit", "°": "degree",
    "TB": "terabyte", "GB": "gigabyte", "MB": "megabyte", "KB": "kilobyte", "kB": "kilobyte",
    "GHz": "gigahertz", "MHz": "megahertz", "kHz": "kilohertz", "Hz": "hertz",
    "kWh": "kilowatt hour", "kW": "kilowatt", "W": "watt", "V": "volt", "mAh": "milliamp hour",
    "ms": "millisecond", "sec": "second", "min": "minute", "hrs": "hour", "hr": "hour", "h": "hour",
}
_UNIT_ALT = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_UNIT_RE = compile_rule(rf"(?<![\w.])({_NUM_DEC})\s?({_UNIT_ALT})(?![\w/])", first=r"\d")


def _unit(match: re.Match[str]) -> str:
    value, symbol = match.groups()
    name = _UNITS[symbol]
    amount = number(value)
    first, _, rest = name.partition(" ")
    if rest and (first == "degree" or rest.startswith("per ")):  # "degrees Celsius", "kilometers per hour"
        said = f"{_plural(first, value)} {rest}"
    else:  # "grams", "kilowatt hours"
        head, _, last = name.rpartition(" ")
        said = f"{head} {_plural(last, value)}".strip()
    return f"{amount} {said}"


_ORDINAL_RE = compile_rule(rf"(?<![\w.])({_NUM})(st|nd|rd|th|ST|ND|RD|TH)\b", first=r"\d")

def _ordinal(match: re.Match[str]) -> str:
    whole = match.group(1).replace(",", "")
    if len(whole) > MAX_NAMED_DIGITS:  # no ordinal has a name this large: its digits
        return number(match.group(1))
    return ordinal(int(whole))


_YEAR_CONTEXT = frozenset(
    "in since from by until till through during circa before after around between year early late mid spring "
    "summer autumn fall winter of to".split()
) | frozenset(m.lower() for m in _MONTHS)
_YEAR_RE = compile_rule(r"(?<![\w.,])(1\d{3}|20\d{2})(?![\d,.]?\d)(?=(\s?(?:AD|BC|BCE|CE)\b)?)", first=r"[12]")
_LAST_WORD_RE = compile_rule(r"([A-Za-z]+)\.?\s+$")
_DECADE_RE = compile_rule(r"(?<![\w.,])(1\d|20)(\d0)s\b|(?<![\w])'(\d0)s\b", first=r"[\d']")


def _previous_word(match: re.Match[str]) -> str:
    before = _LAST_WORD_RE.search(match.string[max(0, match.start() - 16):match.start()])
    return before.group(1) if before else ""


def _year(match: re.Match[str]) -> str:
    """A four-digit number is a year after "in", "since", a month ... or before AD/BC; else a cardinal."""
    if match.group(2) or _previous_word(match).lower() in _YEAR_CONTEXT:
        return year(int(match.group(1)))
    return match.group(0)


def _decade(match: re.Match[str]) -> str:
    words = year(int(match.group(1) + match.group(2))) if match.group(1) else cardinal(int(match.group(3)))
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


# Roman numerals: only after a word that announces a number, or a regnal name.
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
#: 1 to 89 only: "Class C" and "Type D" are letters, and nothing counted after these words reaches 90.
_ROMAN_RE = r"((?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3}))"
_COUNTED = frozenset("Chapter Part Book Volume Vol Act Scene Section Article Episode Season Phase Level Stage Round "
                     "Title Appendix Canto Psalm War Type Class Grade Bowl Mark Schedule Amendment Figure".split())
_REGNAL = frozenset(
    "Henry Elizabeth Edward George William Charles James Richard John Mary Louis Philip Frederick Peter Catherine "
    "Alexander Nicholas Ivan Leo Pius Benedict Gregory Paul Innocent Clement Boniface Urban Alfonso Ferdinand Carlos "
    "Felipe Juan Gustav Gustavus Christian Frederik Harald Olaf Haakon Wilhelm Otto Rudolf Ludwig Friedrich Francis "
    "Napoleon Constantine Justinian Ramesses Ramses Thutmose Amenhotep Selim Mehmed Suleiman Murad Victor Umberto "
    "Pedro Manuel Sancho Stephen Malcolm David Robert".split()
)
#: 1 to 89 only: "Class C" and "Type D" are letters, and nothing counted after these words reaches 90.
_ROMAN_NUMERAL_RE = compile_rule(r"(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})")
_ROMAN_CANDIDATE_RE = compile_rule(r"(?<= )([IVXL]+)\b(?!['’]\w)", first=r"[IVXL]")


def roman_value(numeral: str) -> int:
    """Value of a numeral the strict pattern above accepted (subtractive pairs included)."""
    total = 0
    for here, after in zip(numeral, numeral[1:] + " "):
        value = _ROMAN_VALUES[here]
        total += -value if after != " " and _ROMAN_VALUES[after] > value else value
    return total


def _roman(match: re.Match[str]) -> str:
    """A numeral after a counted word ("Chapter IV": four) or a regnal name ("Henry VIII": the eighth)."""
    numeral = match.group(1)
    word = _previous_word(match)
    if word not in _COUNTED and word not in _REGNAL or not _ROMAN_NUMERAL_RE.fullmatch(numeral):
        return numeral
    if word in _COUNTED:
        return cardinal(roman_value(numeral))
    if numeral == "I" and re.match(r" [a-z]", match.string[match.end():]):
        return numeral  # "when John I said": the pronoun, not John the First
    return f"the {ordinal(roman_value(numeral))}"


_FRACTION_RE = compile_rule(r"(?<![\w/.])(\d{1,3})/(\d{1,2})(?![\w/]|\.\d)", first=r"\d")
_FRACTION_NAMES = {2: ("half", "halves"), 4: ("quarter", "quarters")}


def _fraction(match: re.Match[str]) -> str:
    top, bottom = int(match.group(1)), int(match.group(2))
    if match.group(0) == "24/7":
        return "twenty-four seven"
    if not 2 <= bottom <= 10:
        return f"{cardinal(top)} over {cardinal(bottom)}"
    one, many = _FRACTION_NAMES.get(bottom, (ordinal(bottom), ordinal(bottom) + "s"))
    return f"{cardinal(top)} {one if top == 1 else many}"


_VERSION_RE = compile_rule(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w.]|\.\d)", first=r"\d")


def _version(match: re.Match[str]) -> str:
    """'1.2.3', '192.168.1.1': each part a number, joined by 'point'."""
    return " point ".join(number(part) for part in match.group(0).split("."))


_SHAPED_RANGE_RE = compile_rule(r"(?<=[\d%])\s?[-–]\s?(?=[$€£¥]\d|\d{1,2}:\d\d|\d+(?:\.\d+)?%)", first=r"[\s–-]")
_RANGE_RE = compile_rule(r"(?<=\d)\s?[-–]\s?(?=[$€£¥]?\d)", first=r"[\s–-]")
_SIGNED_RE = compile_rule(r"(?<![\w.,])([-−+])(?=\.?\d)", first=r"[-−+]")
#: A minus sign before a number, money or a percentage, said first so the shapes need no sign of their own.
_MINUS_RE = compile_rule(r"(?<![\w.,\d])[-−](?=[$€£¥]?\.?\d)", first=r"[-−]")
_PLUS_PERCENT_RE = compile_rule(r"(?<![\w.,\d])\+(?=\d[\d,.]*\s?[%°])", first=r"\+")
_DECIMAL_RE = compile_rule(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+)", first=r"[\d.]")


def _signed(match: re.Match[str]) -> str:
    return "minus " if match.group(1) in "-−" else "plus "


def _decimal(match: re.Match[str]) -> str:
    value = match.group(1)
    if value.startswith("."):
        return "point " + digits(value[1:])
    return number(value)


_HAS_DIGIT = compile_rule(r"\d")

# -- the pipeline --------------------------------------------------------------------------------

def _padded(fn: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
    """Words replacing a token glued to a letter or digit ("MP3", "4K") get a space on that side."""

    def sub(match: re.Match[str]) -> str:
        words = fn(match)
        if words == match.group(0):
            return words
        text, start, end = match.string, match.start(), match.end()
        if start and text[start - 1].isalnum():
            words = " " + words
        if end < len(text) and text[end].isalnum():
            words += " "
        return words

    return sub


#: (gate, pattern, replacement): a pass runs only when its gate (a plain substring test or a
#: cheap search) finds something, so text without a shape pays almost nothing for it.
_Gate = Callable[[str], object]


def _has_any(chars: str) -> _Gate:
    return lambda text: any(c in text for c in chars)


_MONTH_GATE = compile_rule("|".join(_MONTH_ABBR)).search
_PASSES: list[tuple[_Gate, re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (_has_any("-"), _ISO_DATE_RE, _iso_date),
    (_has_any("/"), _SLASH_DATE_RE, _slash_date),
    (compile_rule(r"\d[-\s.)]\s?\(?\d").search, _PHONE_RE, _phone),
    (_has_any("$€£¥"), _MONEY_RE, _money),
    (_MONTH_GATE, _MONTH_DAY_RE, _month_day),
    (_MONTH_GATE, _DAY_MONTH_RE, _day_month),
    (_has_any(":"), _TIME_RE, _time),
    (compile_rule(r"\d\s?[AaPp]\.?[Mm]\b").search, _HOUR_AMPM_RE, _hour_ampm),
    (_has_any("%"), _PERCENT_RE, _percent),
    (compile_rule(rf"\d\s?(?:{_UNIT_ALT})(?![\w/])").search, _UNIT_RE, _unit),
    (compile_rule(r"\d(?:st|nd|rd|th|ST|ND|RD|TH)\b").search, _ORDINAL_RE, _ordinal),
    (compile_rule(r"\d0s\b").search, _DECADE_RE, _decade),
    (compile_rule(r"[12]\d{3}").search, _YEAR_RE, _year),
    (_has_any("/"), _FRACTION_RE, _fraction),
    (compile_rule(r"\d\.\d+\.\d").search, _VERSION_RE, _version),
]
_PASSES = [(gate, pattern, _padded(fn)) for gate, pattern, fn in _PASSES]
_padded_decimal = _padded(_decimal)

_ABBREVIATION_GATE = compile_rule("(?:" + "|".join([*_TITLES, *_WORDS, *_NUMBERED, "Dr", "St", "e\\.g", "i\\.e", "No", "no"]) + r")\.|[&#]")
_ROMAN_GATE = compile_rule(r" [IVXL]+\b")


def normalize(text: str) -> str:
    """English ``text`` with numbers, dates, times, money, units and abbreviations in words."""
    if _ABBREVIATION_GATE.search(text):
        text = _abbreviations(text)
    if _HAS_DIGIT.search(text):
        if "-" in text or "–" in text:
            text = _SHAPED_RANGE_RE.sub(" to ", text)  # "$5-$10", "9:00-17:00", "10%-20%": before the shapes become words
        if "-" in text or "−" in text:
            text = _MINUS_RE.sub("minus ", text)
        if "+" in text:
            text = _PLUS_PERCENT_RE.sub("plus ", text)
        for gate, pattern, replace in _PASSES:
            if gate(text):
                text = pattern.sub(replace, text)
        if "-" in text or "–" in text:
            text = _RANGE_RE.sub(" to ", text)
        if "+" in text:
            text = _SIGNED_RE.sub(_signed, text)
        text = _DECIMAL_RE.sub(_padded_decimal, text)
    if _ROMAN_GATE.search(text):
        text = _ROMAN_CANDIDATE_RE.sub(_roman, text)
    return text
