"""A tiny BLIP captioning model with random weights, saved as transformers saves real ones.

`BlipForConditionalGeneration.from_pretrained(folder)` loads it through the same code path as
Salesforce/blip-image-captioning-base; its captions are random words from a small vocabulary.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "rabbit", "bird", "in", "the", "meadow", "red", "square", "street", "night", "sky", "tree", "car"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="[DEC]")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16, "projection_dim": 16},
        text_config={"vocab_size": len(SPECIAL) + len(WORDS), "hidden_size": 32, "encoder_hidden_size": 32,
                     "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 64, "projection_dim": 16, "bos_token_id": ids["[DEC]"],
                     "pad_token_id": ids["[PAD]"], "sep_token_id": ids["[SEP]"], "eos_token_id": ids["[SEP]"]},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # random weights would often emit special tokens, i.e. empty captions: only words
        model.text_decoder.cls.predictions.bias[: len(SPECIAL)] = -1e4
    model.save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
