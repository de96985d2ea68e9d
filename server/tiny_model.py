"""Write a tiny Llama model directory that real vLLM can serve with `--load-format dummy`.

No weights are downloaded: the config is written here and a small BPE tokenizer is
trained here with `tokenizers` (which vLLM's environment has). Run it with the Python
that has vLLM: `python -m server.tiny_model DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "hidden_act": "silu",
}
VOCAB_SIZE = 1024
# "small": steps of about 1.5 ms on one CPU core, so the api server's per-token streaming, not
# the engine, is most of a request's time. "medium": about 7 ms a decode step and 0.25 ms a
# prompt token, so the engine dominates, as on a GPU (the fidelity comparison uses it).
SIZES = {
    "small": {},
    "medium": {"hidden_size": 512, "intermediate_size": 1536, "num_attention_heads": 8,
               "num_key_value_heads": 8, "num_hidden_layers": 8},
}


def _corpus() -> list[str]:
    words = ["the", "a", "of", "to", "and", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "hello", "world"]
    lines = []
    for i in range(2000):
        lines.append(" ".join(words[(i * 7 + k * 13) % len(words)] for k in range(12)))
    return lines


def config_for(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r} (known: {', '.join(SIZES)})")
    return {**CONFIG, **SIZES[size]}


def write_tiny_model(directory: str | Path, size: str = "small") -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {**config_for(size), "vocab_size": tok.get_vocab_size()}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048,
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:",
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m server.tiny_model DIR [small|medium]")
    print(write_tiny_model(sys.argv[1], *sys.argv[2:]))
