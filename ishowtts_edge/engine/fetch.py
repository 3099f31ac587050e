"""Download the released F5TTS_v1_Base weights and the Vocos vocoder for offline use.

The daemon never downloads at run time (an appliance must start without a network
and without surprises); an operator runs this once, e.g. from the CLI, and pastes
the returned snippet into the config.  Layout written::

    dest_dir/F5TTS_v1_Base/model_1250000.safetensors
    dest_dir/F5TTS_v1_Base/vocab.txt
    dest_dir/F5TTS_v1_Base/vocos/config.yaml, pytorch_model.bin

which is also what the engine looks for next to a checkpoint (vocab.txt, vocos/).
Not run by the tests: it needs the network and ~1.4 GB.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)

MODEL_REPO = "SWivid/F5-TTS"
MODEL_NAME = "F5TTS_v1_Base"
MODEL_FILE = f"{MODEL_NAME}/model_1250000.safetensors"
VOCAB_FILE = f"{MODEL_NAME}/vocab.txt"
VOCOS_REPO = "charactr/vocos-mel-24khz"
VOCOS_FILES = ("config.yaml", "pytorch_model.bin")


def fetch_model(dest_dir: Path | str, *, revision: str | None = None) -> str:
    """Download checkpoint, vocab and Vocos into ``dest_dir``; return the ``[engine]`` TOML snippet."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    dest = Path(dest_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", kv(repo=MODEL_REPO, file=MODEL_FILE, dest=dest))
    checkpoint = Path(hf_hub_download(MODEL_REPO, MODEL_FILE, revision=revision, local_dir=dest))
    try:
        vocab = Path(hf_hub_download(MODEL_REPO, VOCAB_FILE, revision=revision, local_dir=dest))
    except EntryNotFoundError:
        # upstream's load_model falls back to the vocab packaged with f5-tts; keep a copy beside the weights
        from ishowtts_edge.engine.upstream import f5_default_vocab

        vocab = checkpoint.parent / "vocab.txt"
        shutil.copyfile(f5_default_vocab(), vocab)
    vocos_dir = checkpoint.parent / "vocos"
    for name in VOCOS_FILES:
        log.info("downloading %s", kv(repo=VOCOS_REPO, file=name, dest=vocos_dir))
        hf_hub_download(VOCOS_REPO, name, local_dir=vocos_dir)
    return toml_snippet(checkpoint, vocab, vocos_dir)


def toml_snippet(checkpoint: Path, vocab: Path, vocoder_dir: Path, model: str = MODEL_NAME) -> str:
    # JSON strings are valid TOML basic strings (quotes and backslashes escaped)
    return (
        "[engine]\n"
        f"model = {json.dumps(model)}\n"
        f"checkpoint = {json.dumps(str(checkpoint))}\n"
        f"vocab = {json.dumps(str(vocab))}\n"
        f"vocoder_dir = {json.dumps(str(vocoder_dir))}\n"
    )
