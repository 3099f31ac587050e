"""Chinese: Arabic numerals in running text read in Chinese (dates, times, money, percentages, units, digit strings).

cn2an's An2Cn spells the numbers ("low" mode: 一百二十三, 三点一四, 负五; "direct" mode digit by
digit).  The rules choosing a reading are ours, one pass each in :data:`_PASSES`, with rows
in tests/test_text_normalise.py.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from cn2an.an2cn import An2Cn

from .patterns import compile_rule


_AN2CN = An2Cn()

#: Plain integers longer than this are read digit by digit (as in English: a phone number or an id).
MAX_CARDINAL_DIGITS = 9

_DIGITS = "零一二三四五六七八九"
#: Digit strings (phone, room, id numbers) say 1 as 幺, as people do to keep it apart from 七.
_PHONE_DIGITS = "零幺二三四五六七八九"


@lru_cache(maxsize=4096)
def cardinal(text: str) -> str:
    """An unsigned integer or decimal as written ("1,234", "3.50", "0042") in Chinese."""
    whole, _, fraction = text.replace(",", "").partition(".")
    separated = "," in text.partition(".")[0]
    if (len(whole) > 1 and whole[0] == "0") or (len(whole) > MAX_CARDINAL_DIGITS and not separated) or len(whole) > 16:
        words = digits(whole)
    else:
        words = _AN2CN.an2cn(whole or "0")
    if fraction:
        words += "点" + digits(fraction)
    return words


def digits(text: str, table: str = _DIGITS) -> str:
    return "".join(table[int(c)] for c in text if "0" <= c <= "9")


_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_NUM_DEC = rf"(?:{_NUM})(?:\.\d+)?"

_FULL_DATE_RE = compile_rule(r"(?<![\d.])(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?![\d.])", first=r"\d")
_YEAR_RE = compile_rule(r"(?<![\d.])(\d{4}|\d{2})(?=\s*年(?!级|代|龄|纪|轻|均|度))", first=r"\d")
_MONTH_RE = compile_rule(r"(?<![\d.])(\d{1,2})(?=\s*月(?!份?以?[前后来内]))", first=r"\d")
_DAY_RE = compile_rule(r"(?<=月)\s*(\d{1,2})(?=\s*[日号])", first=r"[\s\d]")


def _full_date(match: re.Match[str]) -> str:
    y, m, d = match.groups()
    if not (1 <= int(m) <= 12 and 1 <= int(d) <= 31):
        return match.group(0)
    return f"{digits(y)}年{cardinal(str(int(m)))}月{cardinal(str(int(d)))}日"


def _year(match: re.Match[str]) -> str:
    return digits(match.group(1))  # 2024年: 二零二四年, read as digits


def _month(match: re.Match[str]) -> str:
    return cardinal(str(int(match.group(1)))) if 1 <= int(match.group(1)) <= 12 else match.group(0)


def _day(match: re.Match[str]) -> str:
    return cardinal(str(int(match.group(1)))) if 1 <= int(match.group(1)) <= 31 else match.group(0)


_TIME_RE = compile_rule(r"(?<![\d:.])([01]?\d|2[0-3])[:：]([0-5]\d)(?:[:：]([0-5]\d))?(?![\d:])", first=r"\d")


def _hour(h: int) -> str:
    return "两" if h == 2 else cardinal(str(h))


def _time(match: re.Match[str]) -> str:
    hour, minute, second = match.groups()
    said = _hour(int(hour)) + "点"
    m = int(minute)
    if m or (second and int(second)):
        said += ("零" if 0 < m < 10 else "") + (cardinal(str(m)) + "分" if m else "零分")
    if second and int(second):
        said += cardinal(str(int(second))) + "秒"
    return said


_PERCENT_RE = compile_rule(rf"({_NUM_DEC})\s*([%％‰])", first=r"\d")


def _percent(match: re.Match[str]) -> str:
    value, mark = match.groups()
    return ("千分之" if mark == "‰" else "百分之") + cardinal(value)


_CURRENCY = {"¥": "元", "￥": "元", "$": "美元", "€": "欧元", "£": "英镑"}
_MONEY_RE = compile_rule(rf"([¥￥$€£])\s*({_NUM_DEC})(\s*[万亿]+)?", first=r"[¥￥$€£]")


def _money(match: re.Match[str]) -> str:
    symbol, value, magnitude = match.groups()
    return cardinal(value) + (magnitude or "").strip() + _CURRENCY[symbol]


_UNITS = {
    "km/h": "公里每小时", "kph": "公里每小时", "m/s": "米每秒", "km": "公里", "cm": "厘米", "mm": "毫米", "m": "米",
    "kg": "公斤", "mg": "毫克", "g": "克", "ml": "毫升", "mL": "毫升", "L": "升", "l": "升",
    "°C": "摄氏度", "℃": "摄氏度", "°F": "华氏度", "℉": "华氏度", "°": "度",
    "TB": "TB", "GB": "GB", "MB": "MB", "GHz": "吉赫兹", "MHz": "兆赫兹", "Hz": "赫兹",
    "kWh": "千瓦时", "kW": "千瓦", "W": "瓦", "V": "伏", "mAh": "毫安时",
}
UNIT_SYMBOLS = tuple(sorted(_UNITS, key=len, reverse=True))
_UNIT_RE = compile_rule(
    rf"({_NUM_DEC})\s?(" + "|".join(re.escape(u) for u in UNIT_SYMBOLS) + r")(?![A-Za-z/])"
, first=r"\d")


def _unit(match: re.Match[str]) -> str:
    value, symbol = match.groups()
    name = _UNITS[symbol]
    words = cardinal(value)
    if name.isascii():  # "16GB": the unit stays in Latin letters
        return f"{words} {name}"
    return words + name


_PHONE_RE = compile_rule(
    r"(?<![\d.])(?:\+\d{1,3}[\s-]?)?1[3-9]\d{9}(?!\d)"  # mobile: 13812345678, +86 13812345678
    r"|(?<![\d.])\d{3,4}-\d{7,8}(?!\d)"  # landline: 010-12345678
    r"|(?<![\d.])\d{3,4}(?:[\s-]\d{3,4}){2,}(?!\d)"  # 138-1234-5678, 400 123 4567
, first=r"[+\d]")
_LEADING_ZERO_RE = compile_rule(r"(?<![\d.,])0\d+(?![\d.])", first=r"0")
_CODE_RE = compile_rule(r"(号码?|编号|房间?|车次|账号|卡号|密码|验证码|尾号|码)(\s*)(\d{2,})(?![\d.])", first=r"[号码编房车账卡密验尾]")


def _phone(match: re.Match[str]) -> str:
    parts = re.findall(r"\+?\d+", match.group(0))
    return " ".join(("加" if p[0] == "+" else "") + digits(p, _PHONE_DIGITS) for p in parts)


def _code(match: re.Match[str]) -> str:
    """After 号码, 房间, 尾号 ...: a number read digit by digit (房间302: 三零二)."""
    return match.group(1) + match.group(2) + digits(match.group(3), _PHONE_DIGITS)


_RANGE_RE = compile_rule(rf"(?<![\d.])({_NUM_DEC})\s*[-~～–—]\s*(?=\d)", first=r"\d")
_FRACTION_RE = compile_rule(r"(?<![\d./])(\d{1,4})/(\d{1,4})(?![\d/])", first=r"\d")
#: 2 before a measure word is 两 (两个人), not 二; 第2 stays 第二, 2月 二月.
_TWO_RE = compile_rule(r"(?<![\d.第])2(?=\s*(?:个|位|只|条|张|本|件|次|种|块|辆|台|双|对|把|瓶|杯|碗|斤|天|周|岁|小时|分钟|年(?!级)|名|人|家|间|点(?!\d)))", first=r"2")
_NUMBER_RE = compile_rule(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+)")
#: A sign before a number: said first, so the shapes need no sign group (which makes a pattern slow to scan).
_SIGN_RE = compile_rule(r"(?<![\d.])([-−+])(?=[¥￥$€£]?\.?\d)", first=r"[-−+]")


def _fraction(match: re.Match[str]) -> str:
    top, bottom = match.groups()
    return f"{cardinal(bottom)}分之{cardinal(top)}"


def _number(match: re.Match[str]) -> str:
    value = match.group(1)
    return cardinal(("0" + value) if value.startswith(".") else value)


def _sign(match: re.Match[str]) -> str:
    """负/正; 零下 before a temperature (-5℃: 零下五摄氏度)."""
    if match.group(1) == "+":
        return "正"
    return "零下" if _TEMPERATURE_AFTER_RE.match(match.string, match.end()) else "负"


_TEMPERATURE_AFTER_RE = compile_rule(r"\d+(?:\.\d+)?\s?(?:°C|℃|°F|℉|°|度)")


_HAS_DIGIT = compile_rule(r"\d")
#: (gate, pattern, replacement): a pass runs only when its gate finds something.
_Gate = Callable[[str], object]


def _has_any(chars: str) -> _Gate:
    return lambda text: any(c in text for c in chars)


_PASSES: list[tuple[_Gate, re.Pattern[str], Callable[[re.Match[str]], str] | str]] = [
    (_has_any("-/."), _FULL_DATE_RE, _full_date),
    (compile_rule(r"\d{3}").search, _PHONE_RE, _phone),
    (_has_any(":："), _TIME_RE, _time),
    (_has_any("年"), _YEAR_RE, _year),
    (_has_any("月"), _MONTH_RE, _month),
    (_has_any("月"), _DAY_RE, _day),
    (_has_any("-−+"), _SIGN_RE, _sign),
    (_has_any("¥￥$€£"), _MONEY_RE, _money),
    (_has_any("%％‰"), _PERCENT_RE, _percent),
    (compile_rule(r"\d\s?[A-Za-z°℃℉]").search, _UNIT_RE, _unit),
    (_has_any("号码房次密"), _CODE_RE, _code),
    (compile_rule(r"(?<!\d)0\d").search, _LEADING_ZERO_RE, lambda m: digits(m.group(0), _PHONE_DIGITS)),
    (_has_any("/"), _FRACTION_RE, _fraction),
    (_has_any("-~～–—"), _RANGE_RE, lambda m: cardinal(m.group(1)) + "到"),
    (_has_any("2"), _TWO_RE, "两"),
    (lambda text: True, _NUMBER_RE, _number),
]


def normalize(text: str) -> str:
    """Chinese ``text`` with its Arabic numerals, money, dates and units read in Chinese."""
    if not _HAS_DIGIT.search(text):
        return text
    for gate, pattern, replace in _PASSES:
        if gate(text):
            text = pattern.sub(replace, text)
    return text
