"""Multi-instance attention: block selection, the inference layout (with CFG), and the padded training layout."""

from __future__ import annotations

import pytest
import torch

from engine.errors import DataError, ProfileError
from engine.models.dit import MultiInstanceAttnProcessor, TripoSGAttnProcessor, TripoSGDiTModel

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _tiny(num_layers: int = 5, seed: int = 0) -> TripoSGDiTModel:
    torch.manual_seed(seed)
    model = TripoSGDiTModel(num_attention_heads=2, width=16, in_channels=4, num_layers=num_layers,
                            cross_attention_dim=6, cross_attention_2_dim=5)
    return model.eval()


def _batch(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 5, 4, generator=g),
        "timestep": torch.full((batch,), 650.0),
        "encoder_hidden_states": torch.randn(batch, 1, 6, generator=g),
        "encoder_hidden_states_2": torch.randn(batch, 3, 5, generator=g),
    }


def _run(model: TripoSGDiTModel, x: dict[str, torch.Tensor], **attention_kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**x, attention_kwargs=attention_kwargs or None).sample


def _rows(x: dict[str, torch.Tensor], idx: list[int] | slice) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in x.items()}


def test_block_selection_is_exact_not_a_prefix_match():
    model = _tiny(num_layers=12)
    model.set_multi_instance_attention([1])
    assert model.multi_instance_blocks == [1]
    procs = model.attn_processors
    assert isinstance(procs["blocks.1.attn1.processor"], MultiInstanceAttnProcessor)
    for i in (10, 11):
        assert isinstance(procs[f"blocks.{i}.attn1.processor"], TripoSGAttnProcessor)
    # Cross-attentions are never multi-instance.
    assert not any(isinstance(p, MultiInstanceAttnProcessor) for k, p in procs.items() if "attn1" not in k)

    # Behaviour: equal to a hand-made processor map with MI on blocks.1.attn1 only, and different from
    # what MIDI's prefix match on "blocks.1" (blocks 1, 10, 11) would compute.
    x = _batch(3)
    selected = _run(model, x, num_instances=3)
    model.set_attn_processor({k: MultiInstanceAttnProcessor() if k == "blocks.1.attn1.processor"
                              else TripoSGAttnProcessor() for k in procs})
    torch.testing.assert_close(_run(model, x, num_instances=3), selected, rtol=0, atol=0)
    model.set_multi_instance_attention([1, 10, 11])
    assert (_run(model, x, num_instances=3) - selected).abs().max() > 1e-4

    model.set_multi_instance_attention([])
    assert model.multi_instance_blocks == []


def test_integer_like_block_indices_are_accepted():
    model = _tiny(num_layers=12)
    model.set_multi_instance_attention([torch.tensor(8), *range(9, 11), 11])
    assert model.multi_instance_blocks == [8, 9, 10, 11]


@pytest.mark.parametrize("blocks", [[12], [-1], [0, 30], ["3"], [1.0], [True]])
def test_out_of_range_blocks_raise_profile_error_with_valid_range(blocks):
    model = _tiny(num_layers=12)
    with pytest.raises(ProfileError, match=r"0\.\.11"):
        model.set_multi_instance_attention(blocks)


def test_instances_of_a_scene_see_each_other_only_in_mi_blocks():
    model = _tiny()
    x = _batch(3)
    y = {**x, "hidden_states": x["hidden_states"].clone()}
    y["hidden_states"][0] += 1.0  # perturb instance 0 only
    model.set_multi_instance_attention([])
    torch.testing.assert_close(_run(model, y, num_instances=3)[1:], _run(model, x, num_instances=3)[1:],
                               rtol=0, atol=0)
    model.set_multi_instance_attention([1, 2])
    assert (_run(model, y, num_instances=3)[1:] - _run(model, x, num_instances=3)[1:]).abs().max() > 1e-4


def test_cfg_groups_never_mix():
    """[uncond x N, cond x N]: changing the unconditional group leaves the conditional outputs unchanged."""
    model = _tiny()
    model.set_multi_instance_attention([1, 2, 3])
    n = 3
    x = _batch(2 * n)
    perturbed = {k: v.clone() for k, v in x.items()}
    for key in ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_2"):
        perturbed[key][:n] = torch.randn_like(perturbed[key][:n])
    base, moved = _run(model, x, num_instances=n), _run(model, perturbed, num_instances=n)
    torch.testing.assert_close(moved[n:], base[n:], **TOL)
    assert (moved[:n] - base[:n]).abs().max() > 1e-3
    # and a group computed alone equals the same group inside the stacked batch
    torch.testing.assert_close(_run(model, _rows(x, slice(n, None)), num_instances=n), base[n:], **TOL)


def test_training_layout_equals_inference_layout_on_real_instances():
    """Scenes padded to K=3: [2 real + 1 pad | 3 real]; real ones = MI alone, the pad = a lone object."""
    model = _tiny()
    model.set_multi_instance_attention([1, 2])
    x = _batch(6)
    out = _run(model, x, num_instances=torch.tensor([2, 3]), num_instances_per_batch=3)
    torch.testing.assert_close(out[0:2], _run(model, _rows(x, [0, 1]), num_instances=2), **TOL)
    torch.testing.assert_close(out[2:3], _run(model, _rows(x, [2])), **TOL)
    torch.testing.assert_close(out[3:6], _run(model, _rows(x, [3, 4, 5]), num_instances=3), **TOL)

    # The pad does not influence the real instances of its scene.
    padded = {k: v.clone() for k, v in x.items()}
    padded["hidden_states"][2] = torch.randn_like(padded["hidden_states"][2]) * 3
    moved = _run(model, padded, num_instances=[2, 3], num_instances_per_batch=3)
    torch.testing.assert_close(moved[[0, 1, 3, 4, 5]], out[[0, 1, 3, 4, 5]], **TOL)
    assert (moved[2] - out[2]).abs().max() > 1e-3


def test_training_layout_repeats_counts_over_a_cfg_doubled_batch():
    model = _tiny()
    model.set_multi_instance_attention([1, 2])
    x = _batch(4)
    doubled = {k: torch.cat([v.flip(0), v]) for k, v in x.items()}
    out = _run(model, doubled, num_instances=[1, 2], num_instances_per_batch=2)
    half = _run(model, x, num_instances=[1, 2], num_instances_per_batch=2)
    torch.testing.assert_close(out[4:], half, **TOL)
    torch.testing.assert_close(out[:4], _run(model, _rows(doubled, slice(0, 4)), num_instances=[1, 2],
                                             num_instances_per_batch=2), **TOL)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"num_instances": 2}, "whole number of scenes"),
        ({"num_instances": [1, 1]}, "expected an int"),
        ({"num_instances": [4], "num_instances_per_batch": 3}, r"1\.\.3"),
        ({"num_instances": [2, 2], "num_instances_per_batch": 2}, "do not tile"),
    ],
)
def test_bad_layouts_raise_data_error(kwargs, text):
    model = _tiny()
    model.set_multi_instance_attention([1])
    with pytest.raises(DataError, match=text):
        _run(model, _batch(3), **kwargs)
