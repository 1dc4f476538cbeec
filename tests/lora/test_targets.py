"""Target resolution by module name: PTv3 stages/groups/prefixes and DiT blocks/attention kinds."""

from __future__ import annotations

import pytest

from engine.errors import ProfileError
from engine.lora import find_ptv3_stages, resolve_dit_targets, resolve_ptv3_targets
from engine.models.dit import TripoSGDiTModel
from tests.lora.conftest import TINY_DIT, StandInPTv3, Wrapped, standin_small, tiny_ptv3


def test_layout_found_on_real_ptv3_and_standin():
    real = find_ptv3_stages(tiny_ptv3())
    assert (real.prefix, real.encoder, real.decoder) == ("", (0, 1, 2, 3), (0, 1, 2))
    stand = find_ptv3_stages(standin_small())
    assert (stand.encoder, stand.decoder) == ((0, 1, 2, 3, 4), (0, 1, 2, 3))


@pytest.mark.parametrize(
    "groups, stages, encoder_only, expected",
    [
        (["attn"], [3, 4], True, ["enc.enc3.block0.attn.qkv", "enc.enc3.block0.attn.proj",
                                  "enc.enc3.block1.attn.qkv", "enc.enc3.block1.attn.proj",
                                  "enc.enc4.block0.attn.qkv", "enc.enc4.block0.attn.proj"]),
        (["mlp"], [0], True, ["enc.enc0.block0.mlp.0.fc1", "enc.enc0.block0.mlp.0.fc2"]),
        (["attn"], [3], False, ["enc.enc3.block0.attn.qkv", "enc.enc3.block0.attn.proj",
                                "enc.enc3.block1.attn.qkv", "enc.enc3.block1.attn.proj",
                                "dec.dec3.block0.attn.qkv", "dec.dec3.block0.attn.proj"]),
        (["attn"], ["dec0"], False, ["dec.dec0.block0.attn.qkv", "dec.dec0.block0.attn.proj"]),
        # Pointcept DefaultLORASegmentorV2's choice: qkv only.
        (["qkv"], [3, 4], True, ["enc.enc3.block0.attn.qkv", "enc.enc3.block1.attn.qkv", "enc.enc4.block0.attn.qkv"]),
        (["qkv", "attn"], [4], True, ["enc.enc4.block0.attn.qkv", "enc.enc4.block0.attn.proj"]),
    ],
)
def test_ptv3_targets_are_exactly_the_named_linears(groups, stages, encoder_only, expected):
    targets = resolve_ptv3_targets(standin_small(), groups, encoder_only, stages)
    assert sorted(targets.modules) == sorted(expected)


def test_encoder_only_skips_decoder_and_all_stages_cover_everything():
    model = standin_small()
    enc = resolve_ptv3_targets(model, ["attn", "mlp"], True, None)
    both = resolve_ptv3_targets(model, ["attn", "mlp"], False, None)
    assert all(n.startswith("enc.") for n in enc.modules)
    assert len(enc.modules) == 6 * 4  # 6 encoder blocks x 4 linears
    assert len(both.modules) == (6 + 4) * 4
    # Not targeted: cpe linears, pooling/unpooling projections, the stem.
    assert not any(".cpe." in n or ".down." in n or ".up." in n for n in both.modules)
    assert both.roles["dec.dec1.block0.mlp.0.fc2"] == ("dec1", "fc2")


def test_wrapped_backbone_gets_prefixed_names():
    model = Wrapped(standin_small(), 8)
    targets = resolve_ptv3_targets(model, ["attn"], True, [4])
    assert targets.prefix == "backbone."
    assert targets.modules == ("backbone.enc.enc4.block0.attn.qkv", "backbone.enc.enc4.block0.attn.proj")


def test_real_ptv3_names_resolve():
    targets = resolve_ptv3_targets(tiny_ptv3(), ["attn", "mlp"], False, None)
    assert "enc.enc2.block1.mlp.0.fc1" in targets.modules
    assert "dec.dec0.block0.attn.qkv" in targets.modules
    assert len(targets.modules) == (5 + 3) * 4


@pytest.mark.parametrize(
    "stages, encoder_only, fragment",
    [
        ([4], True, "stage 4 does not exist"),
        (["dec3"], False, "stage 'dec3' does not exist"),
        (["middle"], True, "unknown stage name"),
        ([], True, "no stage selected"),
    ],
)
def test_stage_errors_list_the_valid_stages(stages, encoder_only, fragment):
    # SceneSplat's layout: 4 encoder stages, 3 decoder stages.
    model = StandInPTv3(5, (8, 8, 16, 16), (1, 1, 1, 1), (8, 8, 16), (1, 1, 1))
    with pytest.raises(ProfileError) as err:
        resolve_ptv3_targets(model, ["attn"], encoder_only, stages)
    message = str(err.value)
    assert fragment in message
    assert "encoder stages 0, 1, 2, 3, decoder stages 'dec0', 'dec1', 'dec2'" in message
    assert message.startswith("`target_stages`:")


def test_decoder_stage_with_encoder_only_names_both_keys():
    with pytest.raises(ProfileError, match=r"decoder stage 'dec0' conflicts with `encoder_only=True`.*Set `encoder_only`"):
        resolve_ptv3_targets(standin_small(), ["attn"], True, ["dec0"])


def test_unknown_group_and_non_ptv3_model_are_profile_errors():
    with pytest.raises(ProfileError, match=r"unknown PTv3 target group, got \['query'\]"):
        resolve_ptv3_targets(standin_small(), ["query"])
    with pytest.raises(ProfileError, match="no PTv3 encoder stages"):
        resolve_ptv3_targets(Wrapped(StandInPTv3(5, (8,), (1,)), 8).head)


def _dit(**overrides) -> TripoSGDiTModel:
    return TripoSGDiTModel(**{**TINY_DIT, **overrides})


def test_dit_targets_pick_exact_blocks_and_kinds():
    names = resolve_dit_targets(_dit(), blocks=[1, 12], attention_kinds=["self", "cross2"])
    expected = {f"blocks.{b}.{a}.{p}" for b in (1, 12) for a in ("attn1", "attn2_2")
                for p in ("to_q", "to_k", "to_v", "to_out.0")}
    assert set(names) == expected  # blocks.1 never pulls in blocks.10/11
    assert len(names) == 16


def test_dit_all_blocks_and_projection_subset():
    names = resolve_dit_targets(_dit(), None, ["cross"], ["to_k", "to_v"])
    assert len(names) == 13 * 2
    assert all(".attn2." in n and n.rsplit(".", 1)[-1] in ("to_k", "to_v") for n in names)


def test_dit_errors_and_missing_cross2_warns():
    with pytest.raises(ProfileError, match=r"block 13 does not exist.*Valid block indices are 0\.\.12"):
        resolve_dit_targets(_dit(), blocks=[13])
    with pytest.raises(ProfileError, match="unknown attention kind"):
        resolve_dit_targets(_dit(), attention_kinds=["global"])
    with pytest.raises(ProfileError, match="unknown DiT projection"):
        resolve_dit_targets(_dit(), target_modules=["to_out"])
    triposg = _dit(cross_attention_2_dim=None)
    with pytest.warns(UserWarning, match="no `attn2_2` modules"):
        names = resolve_dit_targets(triposg, blocks=[0])
    assert len(names) == 8


def test_guide_stages_on_scenesplat_four_stage_backbone_name_the_valid_ones():
    import torch

    from engine.lora import inject_lora_to_ptv3
    from engine.models.ptv3 import SCENESPLAT_CONFIG, PointTransformerV3

    with torch.device("meta"):
        model = PointTransformerV3(**{**SCENESPLAT_CONFIG, "sparse_conv_backend": "torch", "attention_backend": "sdpa"})
    # The guide's example assumes Pointcept's 5 stages; SceneSplat has enc0..enc3.
    with pytest.raises(ProfileError, match=r"stage 4 does not exist.*encoder stages 0, 1, 2, 3, decoder stages"):
        inject_lora_to_ptv3(model, target_stages=[3, 4])
    assert not hasattr(model, "peft_config")  # nothing was injected


def test_api_argument_errors_are_value_errors_and_keep_the_cli_message():
    # The example: stage 4 on SceneSplat's four-stage backbone. Callers that catch ValueError (as
    # for PEFT's own argument errors) catch it; the CLI still sees a Lora3dError (one line, exit code 2).
    from engine.errors import Lora3dError
    from engine.lora import inject_lora_to_ptv3

    model = StandInPTv3(5, (8, 8, 16, 16), (1, 1, 1, 1), (8, 8, 16), (1, 1, 1))
    with pytest.raises(ValueError, match="stage 4 does not exist") as err:
        inject_lora_to_ptv3(model, target_stages=[4])
    assert isinstance(err.value, Lora3dError) and err.value.exit_code == 2
