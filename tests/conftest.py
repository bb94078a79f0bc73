import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_base_kwargs():
    """Smallest BaseModel settings that still exercise every code path (16 px, narrow U-Net)."""
    return dict(unet="tiny", unet_overrides={"model_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1,
                                              "attention_levels": (1,), "head_dim": 16, "context_dim": 32,
                                              "pos_embed_size": 4},
                resolution=16, max_text_length=16, sample_steps=4, warmup_steps=1, lr=1e-3)
