"""Provides the Sonata family's memory description: PT-v3m2 parameter counts and activations per point.

Everything is counted from the backbone's keyword arguments (no model is built), so `lora3d plan` and the
wizard's Plan screen stay fast; the parameter counts equal the real model's (tests count both). Tokens are
points per scene after voxelisation: `data.point_budget` when set, the synthetic room size for the built-in
data, else `DEFAULT_POINTS_PER_SCENE` (the SphereCrop budget of Pointcept's Sonata/Concerto configs).

Assumptions (as SceneSplat's description, engine.families.scenesplat.memory, where the maths is shared):
- each pooling of stride s keeps 1/s of the points (surface scans keep fewer: this errs on the safe side);
- patch attention runs through SDPA/flash kernels and stores no score matrix (`enable_rpe`/upcasting
  force the math path, which stores heads x patch per point);
- a 3x3x3 neighbourhood holds about `_NEIGHBOURS_K3` active sites; every level builds its neighbour map
  once (int64 pairs) and serializes `len(order)` orders (code, order, inverse: int64);
- the level-0 neighbour search looks sites up in a dense int64 table over the scene's voxel grid when the
  grid is small enough (the sparse conv's own rule), plus query blocks of up to 2^24 entries;
- PT-v3m2 has no sparse-conv stem (a Linear embedding): unlike PT-v3m1 there is no 5x5x5 search;
- the concatenated head (enc_mode) keeps every level's features gathered back to full resolution.
"""

from __future__ import annotations

from typing import Any

from engine.families.base import Lever, MemoryDescription
from engine.families.scenesplat import memory as scenesplat_memory
from engine.families.scenesplat.memory import (
    DEFAULT_ROOM_M,
    SYNTHETIC_ROOM_M,
    block_layer,
    level_factors,
    target_stage_names,
)
from engine.models.ptv3 import sparse_conv

DEFAULT_POINTS_PER_SCENE = 102_400
"""Points per scene when the profile sets no `data.point_budget` (Pointcept's Sonata SphereCrop point_max)."""

_DEFAULTS: dict[str, Any] = dict(
    in_channels=6, order=("z", "z-trans"), stride=(2, 2, 2, 2), enc_depths=(2, 2, 2, 6, 2),
    enc_channels=(32, 64, 128, 256, 512), enc_num_head=(2, 4, 8, 16, 32), enc_patch_size=(48,) * 5,
    dec_depths=(2, 2, 2, 2), dec_channels=(64, 64, 128, 256), dec_num_head=(4, 4, 8, 16),
    dec_patch_size=(48,) * 4, mlp_ratio=4, qkv_bias=True, layer_scale=None, enable_rpe=False,
    upcast_attention=False, upcast_softmax=False, enc_mode=False, mask_token=False,
)
"""PointTransformerV3M2's constructor defaults, for keys a custom backbone mapping leaves out."""

_NEIGHBOURS_K3 = 10
_INPUT_BYTES_PER_POINT = 12 + 24 + 8 + 8
"""coord (3 x fp32), grid_coord (3 x int64), segment and batch index (int64) per point."""
_QUERY_BYTES = 20
"""Bytes per entry of the neighbour search's query block (keys, lookup result, hit mask, hit indices)."""


def config_with_defaults(backbone: dict[str, Any]) -> dict[str, Any]:
    """The backbone's keyword arguments with PT-v3m2's defaults filled in and sequences as tuples."""
    config = dict(_DEFAULTS)
    config.update(backbone)
    for key in ("order", "stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size",
                "dec_depths", "dec_channels", "dec_num_head", "dec_patch_size"):
        value = config[key]
        config[key] = (value,) if isinstance(value, (str, int)) else tuple(value)
    return config


def block_params(c: int, mlp_ratio: float, qkv_bias: bool, layer_scale: bool) -> int:
    """Parameters of one PT-v3m2 block of width c: CPE (conv 3^3 + Linear + LN), 2 LN, attention, MLP,
    and two layer-scale vectors when `layer_scale` is set."""
    h = int(c * mlp_ratio)
    cpe = 27 * c * c + c + c * c + c + 2 * c
    attn = 3 * c * c + (3 * c if qkv_bias else 0) + c * c + c
    mlp = c * h + h + h * c + c
    return cpe + 2 * c + attn + 2 * c + mlp + (2 * c if layer_scale else 0)


def backbone_params(backbone: dict[str, Any]) -> dict[str, int]:
    """Parameters of a PT-v3m2 backbone by part: `embedding`, `encoder` (with pooling), `decoder` (with unpooling)."""
    cfg = config_with_defaults(backbone)
    enc_ch, ratio, bias, ls = cfg["enc_channels"], float(cfg["mlp_ratio"]), bool(cfg["qkv_bias"]), cfg["layer_scale"] is not None
    c0 = enc_ch[0]
    parts = {"embedding": cfg["in_channels"] * c0 + c0 + 2 * c0 + (c0 if cfg["mask_token"] else 0), "encoder": 0,
             "decoder": 0}
    for s, c in enumerate(enc_ch):
        if s > 0:
            parts["encoder"] += enc_ch[s - 1] * c + c + 2 * c
        parts["encoder"] += cfg["enc_depths"][s] * block_params(c, ratio, bias, ls)
    if not cfg["enc_mode"]:
        dec_ch = tuple(cfg["dec_channels"][: len(enc_ch) - 1]) + (enc_ch[-1],)
        for s in range(len(enc_ch) - 1):
            cin, skip, cout = dec_ch[s + 1], enc_ch[s], dec_ch[s]
            parts["decoder"] += (cin * cout + 3 * cout) + (skip * cout + 3 * cout)
            parts["decoder"] += cfg["dec_depths"][s] * block_params(cout, ratio, bias, ls)
    return parts


def head_width(cfg: dict[str, Any]) -> int:
    return int(sum(cfg["enc_channels"])) if cfg["enc_mode"] else int(cfg["dec_channels"][0])


def points_per_scene(profile: Any) -> tuple[int, str]:
    """Points per scene the estimate uses, and where the number comes from (SceneSplat's rule, Sonata's default)."""
    return scenesplat_memory.points_per_scene(profile, DEFAULT_POINTS_PER_SCENE, "Pointcept's SphereCrop budget")


def search_bytes(profile: Any, points: int, cfg: dict[str, Any] | None = None) -> float:
    """The largest transient of a level's 3x3x3 neighbour search, by the sparse conv's rule: a dense int64 table
    over the level's voxel grid when it is small enough, else sorted keys (16 bytes per point), plus the query
    block. Coarser levels have fewer points but a smaller grid, so their table is often the dense one."""
    room = SYNTHETIC_ROOM_M if profile.data.root is None else DEFAULT_ROOM_M
    strides = (cfg or {}).get("stride", ())
    levels = len((cfg or {}).get("enc_depths", (1,)))
    worst, cell, n = 0.0, float(profile.data.grid_size), float(points)
    for s in range(levels):
        cells = 1.0
        for metres in room:
            cells *= metres / cell + 3
        dense = cells <= max(sparse_conv._DENSE_TABLE_MAX, sparse_conv._DENSE_CELLS_PER_QUERY * 27 * n)
        worst = max(worst, (8 * cells if dense else 16 * n) + _QUERY_BYTES * min(1 << 24, 26 * n))
        if s < len(strides):
            cell, n = cell * strides[s], n / strides[s]
    return worst


def _targets(lora: Any, num_enc: int, num_dec: int) -> set[str]:
    """Stage names (`enc{s}`, `dec{s}`) the resolved `lora` keys adapt (none for linear probing)."""
    if lora.method == "full" or not (lora.target_modules is None or lora.target_modules):
        return set()
    return target_stage_names(lora, num_enc, num_dec)


def lora_params_per_rank(cfg: dict[str, Any], lora: Any) -> int:
    """LoRA parameters per unit of rank at the resolved `lora` keys: r x (in + out) per adapted linear."""
    modules = set(lora.target_modules if lora.target_modules is not None else ["qkv"])
    roles = set()
    if "qkv" in modules or "attn" in modules:
        roles.add("qkv")
    if "attn" in modules:
        roles.add("proj")
    if "mlp" in modules:
        roles |= {"fc1", "fc2"}
    num_enc = len(cfg["enc_depths"])
    num_dec = 0 if cfg["enc_mode"] else num_enc - 1
    targets = _targets(lora, num_enc, num_dec)
    ratio = float(cfg["mlp_ratio"])
    per_rank = 0
    widths = [(f"enc{s}", c, cfg["enc_depths"][s]) for s, c in enumerate(cfg["enc_channels"])]
    widths += [(f"dec{s}", cfg["dec_channels"][s], cfg["dec_depths"][s]) for s in range(num_dec)]
    for name, c, depth in widths:
        if name not in targets:
            continue
        h = int(c * ratio)
        per_block = {"qkv": c + 3 * c, "proj": 2 * c, "fc1": c + h, "fc2": h + c}
        per_rank += depth * sum(per_block[r] for r in roles)
    return per_rank


def describe_memory(recipe: Any) -> MemoryDescription:
    """The PT-v3m2 description at the recipe's settings (see the module docstring for assumptions)."""
    profile, options = recipe.profile, recipe.options
    cfg = config_with_defaults(options.backbone)
    lora = profile.lora
    ratio = float(cfg["mlp_ratio"])
    enc_ch, enc_depths, enc_heads, patches = cfg["enc_channels"], cfg["enc_depths"], cfg["enc_num_head"], cfg["enc_patch_size"]
    num_enc = len(enc_depths)
    num_dec = 0 if cfg["enc_mode"] else num_enc - 1
    scores_stored = bool(cfg["enable_rpe"] or cfg["upcast_attention"] or cfg["upcast_softmax"])
    factors = level_factors(cfg)
    targets = _targets(lora, num_enc, num_dec)
    modules = set(lora.target_modules if lora.target_modules is not None else ["qkv"])
    per_rank = lora_params_per_rank(cfg, lora) if lora.method == "lora" else 0
    params = backbone_params(cfg)
    head_in = head_width(cfg)
    classes = options.num_classes
    head = head_in * classes + classes
    if lora.method == "full":
        frozen, trainable = 0, params["embedding"] + params["encoder"] + params["decoder"] + head
    else:
        trainable = head + (params["decoder"] if options.train_decoder else 0)
        frozen = params["embedding"] + params["encoder"] + (0 if options.train_decoder else params["decoder"])

    c0 = enc_ch[0]
    layers: list[dict[str, Any]] = [{
        "name": "embedding", "width": c0, "tokens_factor": 1.0, "checkpointable": False,
        "fp32_elems": 2 * c0, "half_elems": cfg["in_channels"],
    }]

    def add_stage(name: str, c: int, depth: int, heads: int, patch: int, factor: float) -> None:
        h = int(c * ratio)
        adapted = name in targets
        rank_elems = dropout_elems = 0.0
        if adapted and ({"qkv", "attn"} & modules):
            rank_elems += 1
            dropout_elems += c
        if adapted and "attn" in modules:
            rank_elems += 1
            dropout_elems += c
        if adapted and "mlp" in modules:
            rank_elems += 2
            dropout_elems += c + h
        if lora.dropout <= 0:
            dropout_elems = 0.0
        # LayerNorm inputs (cpe, norm1, norm2) and the conv's saved input stay fp32; layer scale
        # saves its two inputs.
        fp32_elems = 4 * c + (2 * c if cfg["layer_scale"] is not None else 0)
        for i in range(depth):
            layers.append(block_layer(f"{name}.block{i}", c, h, heads, patch, factor, fp32_elems, dropout_elems,
                                      rank_elems, scores_stored))

    for s in range(num_enc):
        if s > 0:
            cin, cout = enc_ch[s - 1], enc_ch[s]
            # proj reads the finer level (stride x the coarse tokens); the max, LN and GELU the coarse one.
            layers.append({"name": f"enc{s}.down", "width": cout, "tokens_factor": factors[s], "checkpointable": False,
                           "fp32_elems": 2 * cout, "half_elems": cin * cfg["stride"][s - 1] + cout})
        add_stage(f"enc{s}", enc_ch[s], enc_depths[s], enc_heads[s], patches[s], factors[s])
    dec_ch = tuple(cfg["dec_channels"][:num_dec]) + (enc_ch[-1],)
    for s in reversed(range(num_dec)):
        cin, skip, cout = dec_ch[s + 1], enc_ch[s], dec_ch[s]
        layers.append({"name": f"dec{s}.up", "width": cout, "tokens_factor": factors[s], "checkpointable": False,
                       "fp32_elems": 4 * cout, "half_elems": skip + 2 * cout})
        add_stage(f"dec{s}", cout, cfg["dec_depths"][s], cfg["dec_num_head"][s], patches[s], factors[s])
    # The head: the concatenated (or decoder) features, the logits, softmax and the Lovász sort per point.
    layers.append({"name": "seg_head", "width": classes, "tokens_factor": 1.0, "checkpointable": False,
                   "fp32_elems": 4 * classes + (head_in if cfg["enc_mode"] else 0), "half_elems": head_in})

    index_bytes = sum(f * (3 * 8 * len(cfg["order"]) + 16 * _NEIGHBOURS_K3 + 16) for f in factors[:num_enc])
    points, source = points_per_scene(profile)
    conv_bytes = 4 * max(sparse_conv.conv_transient_elements(max(1, int(points * f)), c, c, profile.device_type)
                         for f, c in zip(factors, enc_ch))
    regime = ("full fine-tuning" if lora.method == "full" else "linear probing (no adapter)" if per_rank == 0
              else f"LoRA on {', '.join(sorted(modules))} of {len(targets)} stage(s)")
    notes = [f"points per scene: {points} ({source})",
             f"{regime}; trained in full: " + (", ".join(options.trained_modules) if lora.method == "lora" else "everything"),
             "PT-v3m2 attention: O(points x patch) through SDPA/flash, no stored scores" if not scores_stored
             else "PT-v3m2 attention: math path (enable_rpe/upcast) stores heads x patch per point"]
    return MemoryDescription(
        frozen_params=int(frozen),
        lora_params=int(per_rank * lora.r),
        other_trainable_params=int(trainable),
        tokens_per_sample=points,
        layers=layers,
        rank=lora.r,
        lora_params_per_rank=int(per_rank),
        input_bytes_per_token=float(_INPUT_BYTES_PER_POINT + 4 * cfg["in_channels"]),
        index_bytes_per_token=float(index_bytes),
        fixed_bytes_per_sample=search_bytes(profile, points, cfg) + conv_bytes,
        lever=Lever("points per scene", "data.point_budget", max(64, points // 2)),
        tokens_vary=True,
        notes=notes,
    )
