"""A tiny random LongCat-Video of the real classes and file formats, for the demo and the tests.

The same loaders serve it and the 13.6B model. Its tokenizer learns a fixed corpus (a few scene
descriptions and the demo's captions), so the model's bytes depend on `base_model.tiny` only, never on
where the clips come from.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from longcat.basemodel.layout import SOURCE_FILE, write_pipeline_files
from longcat.data.demo import DEMO_CAPTIONS
from longcat.files import write_dir_atomically
from longcat.settings import TinyModel, settings_dict

DEFAULT_SHIFT = 12.0

# Wan 2.1 VAE latent statistics (the published LongCat-Video VAE carries the same values).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip

# Text the tiny tokenizer learns its pieces from, besides the demo's captions.
_TINY_CORPUS = (
    "a red square moving across a blue background",
    "a green circle bouncing up and down on a white floor",
    "a yellow triangle spinning slowly in the middle of a black field",
    "colored bars sliding from left to right",
    "a small orange ball rolling past a purple wall",
    "noise patterns flickering in gray tones",
    "a bright light fading in and out over a dark scene",
    "stripes of cyan and magenta drifting down the frame",
)


def tiny_dit_config(tiny: TinyModel) -> dict:
    """The published `dit/config.json` keys at the tiny sizes of `base_model.tiny`."""
    return {
        "in_channels": 16,
        "out_channels": 16,
        "hidden_size": tiny.hidden_size,
        "depth": tiny.depth,
        "num_heads": tiny.num_heads,
        "caption_channels": tiny.text_dim,
        "mlp_ratio": 4,
        "adaln_tembed_dim": tiny.adaln_tembed_dim,
        "frequency_embedding_size": 256,
        "patch_size": [1, 2, 2],
        "enable_flashattn3": False,
        "enable_flashattn2": False,
        "enable_xformers": False,
        "enable_bsa": False,
        "bsa_params": {"sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]},
        "cp_split_hw": None,
        "text_tokens_zero_pad": True,
    }


def train_tiny_tokenizer(vocab_size: int = 256):
    """A T5-style tokenizer (pad 0, eos 1, unk 2, unigram pieces) learned in-process from the fixed corpus."""
    import sentencepiece
    from transformers import T5Tokenizer

    from longcat.encoders.text import prompt_clean

    corpus = [prompt_clean(text) for text in (*DEMO_CAPTIONS, *_TINY_CORPUS)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def write_tiny_base_model(out_dir: str | Path, tiny: TinyModel) -> Path:
    """Write a random tiny LongCat-Video (DiT, Wan VAE, umT5, tokenizer, scheduler) in the published layout.

    Deterministic given `tiny`; each part has its own seed (`seed`, `seed + 1`, `seed + 2`), so the VAE and
    the DiT do not depend on the tokenizer.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from longcat.model import LongCatVideoTransformer3DModel
    from longcat.model.loading import save_dit

    text_heads = 4 if tiny.text_dim % 4 == 0 else 1

    def fill(tmp: Path) -> None:
        tokenizer = train_tiny_tokenizer()
        tokenizer.save_pretrained(tmp / "tokenizer")

        torch.manual_seed(tiny.seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=tiny.text_dim,
                d_kv=tiny.text_dim // text_heads,
                d_ff=2 * tiny.text_dim,
                num_layers=2,
                num_heads=text_heads,
                relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu",
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder.save_pretrained(tmp / "text_encoder")

        torch.manual_seed(tiny.seed + 1)
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=WAN21_LATENTS_MEAN,
            latents_std=WAN21_LATENTS_STD,
        )
        vae.save_pretrained(tmp / "vae")

        torch.manual_seed(tiny.seed + 2)
        dit = LongCatVideoTransformer3DModel(**tiny_dit_config(tiny))
        save_dit(dit, tmp / "dit")

        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=DEFAULT_SHIFT).save_pretrained(
            tmp / "scheduler"
        )
        source = {"kind": "tiny", **settings_dict(tiny)}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, sort_keys=True) + "\n")
        write_pipeline_files(tmp, tokenizer_class=type(tokenizer).__name__)

    return write_dir_atomically(Path(out_dir), fill)
