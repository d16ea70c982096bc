"""Shared fixtures: a Gemma-style tokenizer trained on generated multilingual text, saved as a checkpoint folder."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

MODELS = Path(__file__).parents[2] / "models"


def _load_gemma_tokenizer_module():
    # models/ is not a package and the repository root can't go on sys.path: its py/ folder would shadow the `py`
    # module that pytest imports
    spec = importlib.util.spec_from_file_location("gemma_tokenizer", MODELS / "gemma_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gemma_tokenizer = _load_gemma_tokenizer_module()

WORDS = {
    "en": "the quick brown fox jumps over lazy dog while people were talking about weather and history of "
          "science which they found interesting because nobody knew what happened next".split(),
    "fr": "le garçon était très fatigué après la journée où il a mangé une crème brûlée à côté du château".split(),
    "de": "die Straße über dem Fluss führt zur Mühle wo Müller ein großes Brot bäckt für alle Gäste".split(),
    "es": "el niño pequeño comió una manzana mientras su señora leía el periódico del año pasado".split(),
    "ru": "быстрая коричневая лиса прыгает через ленивую собаку пока люди говорят о погоде".split(),
    "el": "η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο στην Αθήνα".split(),
    "zh": list("我们今天去公园散步天气非常好大家都很开心学习中文需要时间和耐心人工智能正在改变世界"),
    "ja": "今日は いい 天気 ですね 東京 に 行きます カタカナ ひらがな 日本語 を 勉強 しています".split(),
    "ko": "안녕하세요 오늘 날씨가 정말 좋네요 한국어 공부 는 재미있어요 서울 에 가요".split(),
    "ar": "مرحبا بالعالم كيف حالك اليوم الطقس جميل جدا في المدينة الكبيرة".split(),
    "he": "שלום עולם מה שלומך היום מזג האוויר יפה מאוד בעיר".split(),
    "hi": "नमस्ते दुनिया आज मौसम बहुत अच्छा है हम बाज़ार जा रहे हैं क्षत्रिय".split(),
    "th": "สวัสดี ครับ วันนี้ อากาศ ดี มาก ภาษาไทย".split(),
    "vi": "xin chào thế giới hôm nay trời đẹp quá tiếng Việt".split(),
    "emoji": ["😀", "🎉", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "❤️", "🤖", "✨"],
    "code": ["def", "f(x):", "return", "x**2", "{", "}", "[1,", "2]", "==", "!=", "->", "#", "//", "<div>", "</div>",
             "&&", "||", "0x1F", "i++", "std::vector<int>", "self.name", "import", "numpy", "as", "np"],
    "num": ["0", "1", "42", "3.14", "1,000", "2026-11-26", "12:30", "100%", "$5", "€20", "1e-6", "007"],
}
SEPARATORS = [" "] * 12 + ["  ", "\n", "\n\n", "\t", ", ", ". ", "! ", "? ", " - ", "\r\n", "\u3000", "   "]


def make_text(rng: random.Random, n_words: int) -> str:
    """Words from a few randomly chosen languages, joined by varied spacing and punctuation."""
    languages = rng.sample(sorted(WORDS), rng.randint(1, 3))
    words = [rng.choice(WORDS[rng.choice(languages)]) for _ in range(n_words)]
    out = [words[0]]
    for word in words[1:]:
        out += [rng.choice(SEPARATORS), word]
    return "".join(out)


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
    """A checkpoint folder: tokenizer.json (6000 ids, Gemma's layout) and tokenizer_config.json with the chat
    template of models/chat_template.jinja."""
    rng = random.Random(1234)
    texts = [make_text(rng, rng.randint(3, 40)) for _ in range(12000)]
    tokenizer = gemma_tokenizer.train_gemma_style_tokenizer(texts, 6000)
    folder = tmp_path_factory.mktemp("gemma_style")
    tokenizer.save(str(folder / "tokenizer.json"))
    template = (MODELS / "chat_template.jinja").read_text(encoding="utf-8")
    config = gemma_tokenizer.tokenizer_config(template)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def hf_tokenizer(gemma_dir):
    from tokenizers import Tokenizer as HFTokenizer

    return HFTokenizer.from_file(str(gemma_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def tokenizer(gemma_dir):
    from webgemma.tokenizer import Tokenizer
    from webgemma_export.tokenizer_artifact import convert_tokenizer_json

    return Tokenizer.from_bytes(convert_tokenizer_json(gemma_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def text_maker():
    """make_text(rng, n_words): multilingual text with varied spacing."""
    return make_text
