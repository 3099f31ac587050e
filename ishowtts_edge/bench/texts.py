"""What every side synthesizes: the reference's transcript, four texts, and the length sweep's texts."""

from __future__ import annotations

TEXTS = {
    # 3.99 s of audio with the reference below
    "sentence": "The quick brown fox jumps over a lazy dog.",
    # a chat line as a streamer's overlay would read it (60 characters)
    "chat": "lol that clutch was insane, chat is going wild right now! gg",
    # 200 characters: with a 5 s reference upstream's chunking (and ours) makes two chunks
    "paragraph": (
        "Welcome back to the stream, everyone. Today we are trying the new map for the first time, "
        "so expect a few mistakes. Drop your questions in chat and I will read the best ones out loud, at the very end."
    ),
    # a 10-character interjection
    "interjection": "Oh my god!",
}
TEXT_GROUPS = {"all": list(TEXTS), "short": ["interjection"]}
#: The text whose round trip is reported as time to first audio (the engine returns whole audio).
TTFA_TEXT = "chat"
#: The streamed-against-whole comparison adds this 2000-character text (the daemon's limit) when
#: the paragraph is measured: time to first audio must not grow with the text.
LONG_TEXT_CHARS = 2000
#: The text of the "first request after READY".
FIRST_TEXT = "sentence"
#: f5-tts's own example reference and its real transcript.
REF_TEXT = "Some call me nature, others call me mother nature."
VOICE_ID = "bench"
#: Text lengths (characters) of the recompilation sweep: nothing may recompile after READY
#: for any text from 1 to 300 characters.
SWEEP_LENGTHS = [1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 80, 100, 130, 160, 200, 250, 300]
#: Ordinary English the sweep texts are cut from (whole words; ASCII punctuation only).
SWEEP_PASSAGE = (
    "Hello there, friends. The quick brown fox jumps over a lazy dog, and the dog does not seem to mind "
    "at all. We are going to read a few lines out loud today, so please stay with us for a while. Thank you "
    "for the kind words in chat, they really make my day better. Now let us try something new and see what "
    "happens next, shall we? Good luck and have fun, everyone!"
)
#: One word of each length (index = length), to pad a sweep text to its exact length.
SWEEP_FILLERS = ["", "a", "so", "yes", "well", "today", "really", "finally", "together", "wonderful",
                 "absolutely", "comfortable", "occasionally"]


def sweep_text(chars: int) -> str:
    """A text of exactly ``chars`` characters: whole words of SWEEP_PASSAGE, one filler word, a final period.

    Deterministic, so every side and every run synthesizes the same texts.  Words are
    never cut: the length is made exact with a filler word of the missing length.
    """
    if chars < 1:
        raise ValueError("a sweep text has at least one character")
    if chars == 1:
        return "A"
    words = (SWEEP_PASSAGE + " ") * (chars // len(SWEEP_PASSAGE) + 1)
    out: list[str] = []
    for word in words.split():
        # the text so far plus this word, without its punctuation, plus the final period
        if len(" ".join([*out, word.rstrip(".,!?")])) + 1 > chars:
            break
        out.append(word)
    if out:
        out[-1] = out[-1].rstrip(".,!?")
    missing = chars - len(" ".join(out)) - 1  # what the final period leaves to fill
    if out and missing == 1:
        # " x" is two characters: drop the last word and fill its place (and the one) instead
        missing += 1 + len(out.pop())
    if out:
        text = " ".join(out) + (" " + SWEEP_FILLERS[missing - 1] if missing else "") + "."
    else:
        text = SWEEP_FILLERS[chars - 1].capitalize() + "."
    assert len(text) == chars, (chars, text)
    return text


def long_text(chars: int = LONG_TEXT_CHARS) -> str:
    """SWEEP_PASSAGE repeated and cut at a word to at most ``chars`` characters."""
    text = ""
    while len(text) + len(SWEEP_PASSAGE) + 1 <= chars:
        text += SWEEP_PASSAGE + " "
    rest = SWEEP_PASSAGE[: chars - len(text)]
    return (text + rest[: rest.rfind(" ")] if " " in rest else text).strip()
