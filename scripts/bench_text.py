"""Time the text front end on a 300-character line (docs/protocol.md, "Text normalisation").

usage: PYTHONPATH=. python scripts/bench_text.py
"""

from __future__ import annotations

import time
import timeit

START = time.perf_counter()
from ishowtts_edge.text import normalize  # noqa: E402

IMPORT_S = time.perf_counter() - START

LINES = {
    # what most requests look like: prose with a few numbers
    "English, typical": (
        "The meeting moved to Thursday at 3:30 pm, so the team has about two more days to finish the report. "
        "Last quarter we shipped 1,250 units and the return rate fell to 2.5%, which is the best result since 2019. "
        "Please send your comments to the project channel before the end of the week. "
    ),
    # every rule at once: the worst case
    "English, dense": (
        "On 3/5/2024 at 4:30 pm, Dr. Smith paid $19.99 for 3 kg of apples (25% off) and drove 120 km/h to "
        "St. Louis; the 2nd train left at 14:05. Call 555-123-4567 before March 21st. Chapter IV of the "
        "1990s story cost £2.50, and -3.5 degrees, 1,234 people and MP3s were in it too. Version 1.2.3 "
    ),
    "Chinese, dense": (
        "2024年3月5日下午4:30，价格是19.99元，打了25%的折扣，电话13812345678，第3名跑了120km/h。"
        "房间302的温度是-5℃，2个人花了¥100，比分3-2，增长0.5%，1/2的人在14:05到达，还有1,234个苹果和3kg梨。"
        "会议在2024-03-05举行，编号007，10~20个座位，下载速度16GB，价格$5，一共1.5米长，"
    ),
    "mixed, dense": (
        "我买了iPhone 15，花了$999。I paid $5, 我很开心。今天气温25°C，tomorrow it is 30°C. 会议在3:30开始，"
        "Dr. Smith arrives at 4:15 pm on May 5th. 电话是13812345678，room 302 on the 2nd floor, 2个人，"
        "the 1990s、80年代 and 3.14 and 25%，"
    ),
}

if __name__ == "__main__":
    print(f"import: {IMPORT_S * 1000:.0f} ms")
    for name, line in LINES.items():
        line = (line * 2)[:300]
        normalize(line)  # warm the caches of the number spellers as a running daemon has them
        loops = 2000
        best = min(timeit.repeat(lambda: normalize(line), number=loops, repeat=5)) / loops
        print(f"{name}: {len(line)} characters, {best * 1e6:.0f} µs per line")
