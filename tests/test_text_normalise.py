"""The text front end: what each kind of written token is said as, in English and Chinese.

Each table row is (written, said).  The English table goes through the whole front end
(text without Han characters is English); the Chinese one through the Chinese rules, so a
bare "15" reads 十五 there; MIXED goes through the script dispatcher.
"""

from __future__ import annotations

import random

import pytest

from ishowtts_edge.text import chinese, normalize, normalize_strict, split_spans

ENGLISH = [
    # cardinals, numbers inside words, long digit strings, trailing punctuation: see the rows
    ('I have 3 apples.', 'I have three apples.'),
    ('0 items', 'zero items'),
    ('7', 'seven'),
    ('13 cats', 'thirteen cats'),
    ('42', 'forty-two'),
    ('100 people', 'one hundred people'),
    ('101 dogs', 'one hundred and one dogs'),
    ('1,000 ships', 'one thousand ships'),
    ('1,234,567 stars', 'one million two hundred and thirty-four thousand five hundred and sixty-seven stars'),
    ('999,999,999', 'nine hundred and ninety-nine million nine hundred and ninety-nine thousand nine hundred and ninety-nine'),
    ('I have 3.', 'I have three.'),
    ('She is 21, he is 22.', 'She is twenty-one, he is twenty-two.'),
    ('2048 bytes', 'two thousand and forty-eight bytes'),
    ('It costs $19.99 today.', 'It costs nineteen dollars and ninety-nine cents today.'),
    ('$1.00', 'one dollar'),
    ('$0.05', 'five cents'),
    ('$5', 'five dollars'),
    ('$1', 'one dollar'),
    ('$2,500', 'two thousand five hundred dollars'),
    ('$0.01', 'one cent'),
    ('£2.50', 'two pounds and fifty pence'),
    ('£1', 'one pound'),
    ('€1', 'one euro'),
    ('€3.20', 'three euros and twenty cents'),
    ('¥500', 'five hundred yen'),
    ('$2.5 million', 'two point five million dollars'),
    ('$5k', 'five thousand dollars'),
    ('$3bn', 'three billion dollars'),
    ('-$5', 'minus five dollars'),
    ('I paid $5-$10.', 'I paid five dollars to ten dollars.'),
    ('Call 555-123-4567.', 'Call five five five, one two three, four five six seven.'),
    ('(555) 123-4567', 'five five five, one two three, four five six seven'),
    ('+1 555 123 4567', 'plus one, five five five, one two three, four five six seven'),
    ('555-1234', 'five five five, one two three four'),
    ('1-800-555-1234', 'one, eight zero zero, five five five, one two three four'),
    ('020 7946 0958', 'zero two zero, seven nine four six, zero nine five eight'),
    ('Card 4111-1111-1111-1111.', 'Card four one one one, one one one one, one one one one, one one one one.'),
    ('10 20 30', 'ten twenty thirty'),
    ('9876543210', 'nine eight seven six five four three two one zero'),
    ('12345678901234567890', 'one two three four five six seven eight nine zero one two three four five six seven eight nine zero'),
    ('007', 'zero zero seven'),
    ('0042', 'zero zero four two'),
    ('123456789', 'one hundred and twenty-three million four hundred and fifty-six thousand seven hundred and eighty-nine'),
    ('8,000,000,000', 'eight billion'),
    ('at 4:30 pm', 'at four thirty PM'),
    ('at 4:30 PM.', 'at four thirty PM.'),
    ('14:05', 'fourteen oh five'),
    ('4:00', "four o'clock"),
    ('00:30', 'twelve thirty AM'),
    ('12:00', "twelve o'clock"),
    ('20:00', 'twenty hundred'),
    ('9:05 a.m. Then', 'nine oh five AM. Then'),
    ('at 5pm', 'at five PM'),
    ('5 p.m.', 'five PM.'),
    ('7 AM', 'seven AM'),
    ('4:30:15', 'four thirty and fifteen seconds'),
    ('9:00-17:00', "nine o'clock to seventeen hundred"),
    ('2024-03-05', 'March fifth, twenty twenty-four'),
    ('3/5/2024', 'March fifth, twenty twenty-four'),
    ('25/12/2023', 'December twenty-fifth, twenty twenty-three'),
    ('1/2/99', 'January second, nineteen ninety-nine'),
    ('March 5, 2024', 'March fifth, twenty twenty-four'),
    ('May 5th', 'May fifth'),
    ('5 March 2024', 'the fifth of March twenty twenty-four'),
    ('the 21st of June.', 'the twenty-first of June.'),
    ('Dec. 25', 'December twenty-fifth'),
    ('in 2024', 'in twenty twenty-four'),
    ('In 2024, we met.', 'In twenty twenty-four, we met.'),
    ('since 1999', 'since nineteen ninety-nine'),
    ('by 1905', 'by nineteen oh five'),
    ('in 2000', 'in two thousand'),
    ('from 1990 to 2005', 'from nineteen ninety to two thousand and five'),
    ('March 2024', 'March twenty twenty-four'),
    ('in 1066 AD', 'in ten sixty-six AD'),
    ('the 1990s', 'the nineteen nineties'),
    ("the '80s", 'the eighties'),
    ('the 2000s', 'the two thousands'),
    ('25% off', 'twenty-five percent off'),
    ('3.5 % up', 'three point five percent up'),
    ('-2% down', 'minus two percent down'),
    ('+4% growth', 'plus four percent growth'),
    ('10%-20%', 'ten percent to twenty percent'),
    ('100%', 'one hundred percent'),
    ('3 kg', 'three kilograms'),
    ('1 kg', 'one kilogram'),
    ('2.5 km', 'two point five kilometers'),
    ('120 km/h', 'one hundred and twenty kilometers per hour'),
    ('60 mph', 'sixty miles per hour'),
    ('25°C', 'twenty-five degrees Celsius'),
    ('-5 °C', 'minus five degrees Celsius'),
    ('90°', 'ninety degrees'),
    ('16 GB', 'sixteen gigabytes'),
    ('3.2GHz', 'three point two gigahertz'),
    ('5 kWh', 'five kilowatt hours'),
    ('1 foot', 'one foot'),
    ('6 ft', 'six feet'),
    ('250 ml', 'two hundred and fifty milliliters'),
    ('5 min', 'five minutes'),
    ('24h', 'twenty-four hours'),
    ('100 W', 'one hundred watts'),
    ('the 1st', 'the first'),
    ('2nd', 'second'),
    ('3rd', 'third'),
    ('11th', 'eleventh'),
    ('21st', 'twenty-first'),
    ('101st', 'one hundred and first'),
    ('1,000th', 'one thousandth'),
    ('Pi is 3.14159.', 'Pi is three point one four one five nine.'),
    ('0.5', 'zero point five'),
    ('.5', 'point five'),
    ('3.50', 'three point five zero'),
    ('-3.25', 'minus three point two five'),
    ('+4', 'plus four'),
    ('1,234,567.89', 'one million two hundred and thirty-four thousand five hundred and sixty-seven point eight nine'),
    ('Version 1.2.3 released.', 'Version one point two point three released.'),
    ('It is -5 degrees.', 'It is minus five degrees.'),
    ('Mr. Smith', 'Mister Smith'),
    ('Mrs. Jones', 'Missus Jones'),
    ('Ms. Lee', 'Miz Lee'),
    ('Dr. Jones', 'Doctor Jones'),
    ('Prof. Xavier', 'Professor Xavier'),
    ('St. Louis', 'Saint Louis'),
    ('Elm St. is closed', 'Elm Street is closed'),
    ('Elm Dr. and', 'Elm Drive and'),
    ('Acme Inc. It works.', 'Acme Incorporated. It works.'),
    ('Acme Inc.', 'Acme Incorporated.'),
    ('John Smith Jr. is here', 'John Smith Junior is here'),
    ('approx. 5 km', 'approximately five kilometers'),
    ('i.e. far', 'that is far'),
    ('e.g. this', 'for example this'),
    ('5 vs. 6', 'five versus six'),
    ('apples, pears, etc.', 'apples, pears, et cetera.'),
    ('No. 5', 'number five'),
    ('#1', 'number one'),
    ('AT&T', 'AT and T'),
    ('R&D', 'R and D'),
    ('Chapter IV', 'Chapter four'),
    ('World War II', 'World War two'),
    ('Henry VIII', 'Henry the eighth'),
    ('Louis XIV', 'Louis the fourteenth'),
    ('Super Bowl LVIII', 'Super Bowl fifty-eight'),
    ('Vol. III', 'Volume three'),
    ('Type C', 'Type C'),
    ('Class D', 'Class D'),
    ('Henry I was king.', 'Henry I was king.'),
    ('I think, therefore I am.', 'I think, therefore I am.'),
    ('MP3', 'MP three'),
    ('4K', 'four K'),
    ('COVID-19', 'COVID-nineteen'),
    ('B2B', 'B two B'),
    ('x86', 'x eighty-six'),
    ('F5-TTS', 'F five-TTS'),
    ('3D', 'three D'),
    ('Pages 10-20', 'Pages ten to twenty'),
    ('5–7', 'five to seven'),
    ('1/2 cup', 'one half cup'),
    ('3/4 mile', 'three quarters mile'),
    ('2/3 done', 'two thirds done'),
    ('24/7', 'twenty-four seven'),
    ('5/20 odds', 'five over twenty odds'),
    ('Hello there.', 'Hello there.'),
    ("It's 3 o'clock, right?", "It's three o'clock, right?"),
    ('Call me at 4:30!', 'Call me at four thirty!'),
    ('She won 3-2.', 'She won three to two.'),
    ('Temperature: -3.', 'Temperature: minus three.'),
]

CHINESE = [
    ('我有3个苹果。', '我有三个苹果。'),
    ('0', '零'),
    ('7', '七'),
    ('10', '十'),
    ('15', '十五'),
    ('20', '二十'),
    ('110', '一百一十'),
    ('1000', '一千'),
    ('1002', '一千零二'),
    ('10000', '一万'),
    ('100010', '十万零一十'),
    ('123456', '十二万三千四百五十六'),
    ('100000000', '一亿'),
    ('1,234', '一千二百三十四'),
    ('1,400,000,000', '十四亿'),
    ('2024年3月5日是星期二。', '二零二四年三月五日是星期二。'),
    ('2024年', '二零二四年'),
    ('1999年', '一九九九年'),
    ('3月', '三月'),
    ('12月', '十二月'),
    ('5日', '五日'),
    ('5号', '五号'),
    ('3月15号', '三月十五号'),
    ('会议在2024-03-05举行', '会议在二零二四年三月五日举行'),
    ('2024/3/5', '二零二四年三月五日'),
    ('2023.12.25', '二零二三年十二月二十五日'),
    ('现在是4:30', '现在是四点三十分'),
    ('下午14:05', '下午十四点零五分'),
    ('2:00', '两点'),
    ('12:00:30', '十二点零分三十秒'),
    ('8:05', '八点零五分'),
    ('0:00', '零点'),
    ('价格是19.99元', '价格是十九点九九元'),
    ('25%的折扣', '百分之二十五的折扣'),
    ('增长了0.5%', '增长了百分之零点五'),
    ('100%', '百分之一百'),
    ('3‰', '千分之三'),
    ('¥100', '一百元'),
    ('￥88.5', '八十八点五元'),
    ('$5', '五美元'),
    ('€20', '二十欧元'),
    ('£3.5', '三点五英镑'),
    ('¥5万', '五万元'),
    ('电话13812345678', '电话幺三八幺二三四五六七八'),
    ('+86 13812345678', '加八六 幺三八幺二三四五六七八'),
    ('座机010-12345678', '座机零幺零 幺二三四五六七八'),
    ('客服400-123-4567', '客服四零零 幺二三 四五六七'),
    ('138-1234-5678', '幺三八 幺二三四 五六七八'),
    ('房间302', '房间三零二'),
    ('尾号0571', '尾号零五七幺'),
    ('验证码123456', '验证码幺二三四五六'),
    ('编号12345678901234567890', '编号幺二三四五六七八九零幺二三四五六七八九零'),
    ('007号特工', '零零七号特工'),
    ('温度-5℃', '温度零下五摄氏度'),
    ('气温25°C', '气温二十五摄氏度'),
    ('速度120km/h', '速度一百二十公里每小时'),
    ('重3kg', '重三公斤'),
    ('长1.5米', '长一点五米'),
    ('长1.5m', '长一点五米'),
    ('5cm', '五厘米'),
    ('500ml', '五百毫升'),
    ('下载速度16GB', '下载速度十六 GB'),
    ('第2名', '第二名'),
    ('2个人', '两个人'),
    ('2年级', '二年级'),
    ('2月', '二月'),
    ('2天', '两天'),
    ('22个', '二十二个'),
    ('2小时', '两小时'),
    ('2岁', '两岁'),
    ('12个', '十二个'),
    ('第3章', '第三章'),
    ('10~20个', '十到二十个'),
    ('1-3天', '一到三天'),
    ('1/2', '二分之一'),
    ('3/4', '四分之三'),
    ('负数-3.5和+7。', '负数负三点五和正七。'),
    ('-8', '负八'),
    ('3.14', '三点一四'),
    ('0.5', '零点五'),
    ('.5', '零点五'),
    ('80年代', '八十年代'),
    ('2年前', '两年前'),
    ('3年', '三年'),
    ('1000个人', '一千个人'),
    ('99%的人', '百分之九十九的人'),
    ('打了8.5折', '打了八点五折'),
    ('这是第1次', '这是第一次'),
    ('iPhone15', 'iPhone十五'),
    ('版本v2', '版本v二'),
    ('共3.5万人', '共三点五万人'),
    ('他跑了100米', '他跑了一百米'),
    ('早上7:30起床', '早上七点三十分起床'),
    ('每天24小时', '每天二十四小时'),
    ('第21届', '第二十一届'),
    ('2.5亿', '二点五亿'),
    ('你好。', '你好。'),
    ('2点半', '两点半'),
    ('今天是5月1日劳动节', '今天是五月一日劳动节'),
    ('有-3度', '有零下三度'),
    ('比去年增长15.5%', '比去年增长百分之十五点五'),
    ('花了¥1,299', '花了一千二百九十九元'),
    ('2:30', '两点三十分'),
]

MIXED = [
    ("我买了iPhone 15，花了$999。", "我买了iPhone 十五，花了九百九十九美元。"),
    ("I paid $5, 我很开心。", "I paid five dollars, 我很开心。"),
    ("今天气温25°C，tomorrow it is 30°C.", "今天气温二十五摄氏度，tomorrow it is thirty degrees Celsius."),
    ("我有3kg苹果", "我有三公斤苹果"),
    ("会议在3:30开始, see you at 4:15 pm.", "会议在三点三十分开始, see you at four fifteen PM."),
    ("２０２４年３月５日", "二零二四年三月五日"),
    ("我的电话是 555-123-4567", "我的电话是 五五五 幺二三 四五六七"),
    ("Room 302 on the 2nd floor, 2个人", "Room three hundred and two on the second floor, 两个人"),
    ("the 1990s、80年代", "the nineteen nineties、八十年代"),
    ("增长１５％", "增长百分之十五"),
    ("Hello 世界", "Hello 世界"),
]


@pytest.mark.parametrize(("written", "said"), ENGLISH, ids=[w for w, _ in ENGLISH])
def test_english_tokens_are_said_as_words(written, said):
    assert normalize_strict(written) == said


@pytest.mark.parametrize(("written", "said"), CHINESE, ids=[w for w, _ in CHINESE])
def test_chinese_tokens_are_said_in_chinese(written, said):
    assert chinese.normalize(written) == said


@pytest.mark.parametrize(("written", "said"), MIXED, ids=[w for w, _ in MIXED])
def test_mixed_script_text_is_normalised_per_span(written, said):
    assert normalize_strict(written) == said


def test_the_tables_cover_at_least_a_hundred_rows_per_language():
    assert len(ENGLISH) >= 100 and len(CHINESE) >= 100


def test_spans_cover_the_text_exactly_and_split_by_script():
    text = "I paid $5, 我很开心。Then 3 more"
    spans = split_spans(text)
    assert "".join(piece for _, piece in spans) == text
    assert [lang for lang, _ in spans] == ["en", "zh", "en"]


def test_text_without_anything_to_rewrite_comes_back_unchanged():
    for text in ("Hello world, this is a test of the engine.", "我们今天去公园散步，然后回家吃饭。", "  spaced  out  "):
        assert normalize(text) == text


def test_normalisation_is_deterministic_and_idempotent_on_its_output():
    line = "On 3/5/2024 at 4:30 pm, Dr. Smith paid $19.99; 2024年3月5日，价格19.99元，25%。"
    first = normalize(line)
    assert all(normalize(line) == first for _ in range(20))
    assert normalize(first) == first


def test_a_very_long_digit_string_is_read_digit_by_digit_in_bounded_length():
    digits = "9" * 2000
    assert normalize_strict(digits) == " ".join(["nine"] * 2000)
    assert chinese.normalize(digits) == "九" * 2000


def test_random_text_never_raises_and_stays_within_a_bounded_expansion():
    """The front end runs on every client text: no input may make a rule raise."""
    alphabet = "0123456789 ,.:;-+/%$€£¥°#&()'aAmpPkgKMIVXLCD年月日号点元个第两万亿，。、：％℃－+０９\u0663\u00b2\t\n"
    rng = random.Random(17)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        said = normalize_strict(text)
        assert len(said) <= 40 * len(text) + 40


def test_a_failing_rule_falls_back_to_the_text_as_given(monkeypatch, caplog):
    from ishowtts_edge.text import english

    def broken(text):
        raise ValueError("a bug")

    monkeypatch.setattr(english, "normalize", broken)
    assert normalize("It costs $5 now.") == "It costs $5 now."
    assert "text normalisation failed" in caplog.text and "$5" not in caplog.text


# -- through the real daemon (demo model on CPU) ---------------------------------------------------

SPOKEN = "Chapter 4 costs $5 at 4:30."


def _say(daemon, text: str, **fields):
    from ishowtts_edge.client import Client

    with Client(daemon.endpoint, timeout_s=120) as client:
        return client.synthesize(text, format="f32le", seed=7, **fields)


def test_normalize_false_hands_the_text_to_the_engine_exactly_as_given(daemon):
    """normalize: false is today's path: the text as written goes to the chunker, so the audio is
    byte for byte what the same text gave before the front end existed (the engine's audio is a
    function of the text it is handed, which the last request shows)."""
    raw = _say(daemon, SPOKEN, normalize=False, echo_text=True)
    assert raw.header["text"] == SPOKEN
    assert _say(daemon, SPOKEN, normalize=False).audio == raw.audio  # same seed, same bytes

    spoken = _say(daemon, SPOKEN, echo_text=True)  # on by default
    said = "Chapter four costs five dollars at four thirty."
    assert spoken.header["text"] == said
    assert spoken.audio != raw.audio
    # The front end is only a text rewrite: its output, sent with normalize off, gives the same bytes.
    assert _say(daemon, said, normalize=False).audio == spoken.audio


def test_the_normalised_text_sets_the_audio_length(daemon):
    """The duration estimate counts the spoken form, so "$19.99" gets the time its words need."""
    short = _say(daemon, "It costs $19.99.", normalize=False)
    spoken = _say(daemon, "It costs $19.99.")
    assert spoken.header["samples"] > short.header["samples"] * 2


def test_echo_text_is_absent_unless_asked_and_bad_values_are_refused(daemon):
    from ishowtts_edge.client import Client, ClientError

    assert "text" not in _say(daemon, "Hi there.").header
    with Client(daemon.endpoint, timeout_s=120) as client:
        with pytest.raises(ClientError) as err:
            client.synthesize("Hi there.", normalize="yes")
        assert err.value.code == "bad_request" and "normalize" in str(err.value)
        with pytest.raises(ClientError) as err:
            client.synthesize("Hi there.", echo_text="yes")
        assert err.value.code == "bad_request" and "echo_text" in str(err.value)


def test_a_number_too_large_to_name_is_read_digit_by_digit_and_the_rest_still_normalised():
    """num2words names nothing from 10**306 on (it raises): such a number, even with separators,
    must not make the whole text fall back to unnormalised."""
    huge = "1" + ",000" * 103
    said = normalize_strict(f"Pay ${huge} at 4:30 pm, the {huge}th time, {huge}% of {huge} kg.")
    assert said.startswith("Pay one " + "zero " * 309)
    assert "four thirty PM" in said and "$" not in said and "%" not in said and "kg" not in said
    assert "1" not in said and "th time" not in said
    assert normalize_strict("1" + ",000" * 101) == "one centillion"  # still named up to there
