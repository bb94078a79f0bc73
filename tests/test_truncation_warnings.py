"""Truncated training captions are counted and reported once per epoch; a user's prompt that gets cut still warns."""
import uuid
import warnings

import lightning as L
import torch

from lit_edify.modules.config import flat
from lit_edify.callbacks.truncation import TruncationReport
from lit_edify.modules.base import BaseModel

torch.set_num_threads(1)


def _long(tag: str) -> str:
    """A caption far over the tiny model's 16 tokens, unique so that the encoder's cache never has it."""
    return f"{tag} {uuid.uuid4().hex} " + " ".join(["a red circle next to a blue square"] * 6)


def _batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, "caption": [_long(f"b{i}c{j}") for j in range(4)]}
            for i in range(n)]


def _truncation_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "truncat" in str(w.message)]


def test_training_reports_truncated_captions_once_per_epoch_and_prompts_still_warn(tiny_base_kwargs):
    torch.manual_seed(0)
    model = BaseModel(**flat(**tiny_base_kwargs))
    trainer = L.Trainer(max_epochs=2, callbacks=[TruncationReport()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    data = torch.utils.data.DataLoader(_batches(3), batch_size=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    msgs = _truncation_warnings(caught)
    # 3 batches x 4 unique captions: one count for epoch 0, not 12 warnings (epoch 1 finds them in the cache)
    reports = [m for m in msgs if "training caption(s) were truncated" in m]
    assert reports == ["12 training caption(s) were truncated to 16 tokens in epoch 0 (e.g. "
                       f"{reports[0].split('(e.g. ')[1]}"]
    assert len(msgs) <= 2                       # the report, plus at most one immediate heads-up per process
    assert all("counted and reported once per epoch" in m for m in msgs if m not in reports)
    # after fitting, a user's prompts that get cut warn one by one again (sampling)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate([_long("user"), _long("user")], steps=1)
    assert len([m for m in _truncation_warnings(caught) if m.startswith("Caption truncated from")]) == 2


def test_a_fit_that_fails_also_restores_per_prompt_warnings(tiny_base_kwargs):
    class Boom(L.Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("boom")

    torch.manual_seed(0)
    model = BaseModel(**flat(**tiny_base_kwargs))
    trainer = L.Trainer(max_steps=3, callbacks=[TruncationReport(), Boom()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, torch.utils.data.DataLoader(_batches(2), batch_size=None))
        except RuntimeError:
            pass
        model._text_encoder.encode([_long("after")])
    msgs = _truncation_warnings(caught)
    assert any("4 training caption(s) were truncated to 16 tokens before training stopped" in m for m in msgs)
    assert msgs[-1].startswith("Caption truncated from") and "after" in msgs[-1]
