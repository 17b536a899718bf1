"""Write a tiny random-weight Llama and a BPE tokenizer trained on local text: no hub needed.

    python3 make_tiny_llama.py OUT_DIR

The weights are random (seeded), so generations are noise; what matters for warm-up is that
vLLM loads a real Llama architecture and compiles its real graphs. Trained on text that every
Debian image has (the licences under /usr/share/common-licenses), so the build reaches nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 2048
SPECIALS = ["<unk>", "<s>", "</s>"]


def corpus() -> list[str]:
    """Local English text, one paragraph a line."""
    licences = sorted(Path("/usr/share/common-licenses").glob("*"))
    texts = [path.read_text(errors="replace") for path in licences if path.is_file()]
    return [line for text in texts for line in text.split("\n\n") if line.strip()]


def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=2048,
    )


def main(out: Path) -> None:
    torch.manual_seed(0)
    tok = tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(f"tiny Llama ({sum(p.numel() for p in model.parameters())} parameters) in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
