"""Provides the SceneSplat family's memory description: PTv3 parameter counts and activations per point.

Everything is counted from the backbone's keyword arguments (no model is built), so the wizard's Plan
screen stays fast. Tokens are points per scene after voxelisation: `data.point_budget` when set, the
synthetic room size for the built-in data, else `DEFAULT_POINTS_PER_SCENE` (SceneSplat's own budget).

Assumptions:
- Each pooling of stride s keeps 1/s of the points. Dense surface scans pool closer to 1/s^2 (an
  octree parent cell on a surface holds about four children); sparser scenes keep more (the built-in
  rooms keep 0.63 and then 0.41 per level), so 1/s errs on the safe side.
- Patch attention is O(points x patch) and stores no score matrix (SDPA flash/memory-efficient
  kernels); `enable_rpe` or upcasting forces the math path, which stores heads x patch per point.
- The neighbour search's dense lookup table spans the scene's voxel grid (`DEFAULT_ROOM_M` for real
  data, at `data.grid_size`).
- A submanifold 3x3x3 neighbourhood holds about `_NEIGHBOURS_K3` active sites on a surface, 5x5x5
  about `_NEIGHBOURS_K5` (neighbour maps are int64 pairs, built once per level).
- A pure-torch sparse convolution allocates, beyond its output, two chunk buffers of at most
  N x C elements (`conv_transient_bytes`; about 2 MiB on CPU); spconv's own buffers are taken to be
  no larger.

`inference_memory` is the forward-only (no gradient) peak, for prediction and evaluation: the
weights, the inputs and index buffers, and the largest set of tensors alive at once during the
forward (one block's MLP at the widest level, with the encoder features kept for the decoder).
"""

from __future__ import annotations

from typing import Any

from engine.families.base import Lever, MemoryDescription
from engine.families.scenesplat.options import output_width
from engine.models.ptv3 import sparse_conv
from engine.models.ptv3.sparse_conv import conv_transient_elements

DEFAULT_ROOM_M = (8.0, 8.0, 3.0)
"""Scene extent in metres assumed for the dense neighbour lookup table of real data."""
SYNTHETIC_ROOM_M = (4.5, 4.0, 2.5)
"""Extent of the built-in synthetic rooms (at most 5 x 4.5 m floor, 2.5 m walls)."""
DEFAULT_POINTS_PER_SCENE = 192_000
"""Points per scene when the profile sets no `data.point_budget` (SceneSplat's training budget)."""

_PTV3_DEFAULTS: dict[str, Any] = dict(
    in_channels=6, order=("z", "z-trans"), stride=(2, 2, 2, 2), enc_depths=(2, 2, 2, 6, 2),
    enc_channels=(32, 64, 128, 256, 512), enc_num_head=(2, 4, 8, 16, 32), enc_patch_size=(48,) * 5,
    dec_depths=(2, 2, 2, 2), dec_channels=(64, 64, 128, 256), dec_num_head=(4, 4, 8, 16),
    mlp_ratio=4, qkv_bias=True, enable_rpe=False, upcast_attention=False, upcast_softmax=False,
    enc_mode=False, cls_mode=False,
)
"""PointTransformerV3's constructor defaults, for keys a custom backbone mapping leaves out."""

_NEIGHBOURS_K3 = 10
_NEIGHBOURS_K5 = 25
_PROMPT_HIDDEN = 32
_SEARCH_BLOCK_BYTES = 48 * 1024**2
"""The neighbour search's query blocks (measured on CPU: the tiny model's peak sits about this much
above the table plus the counted activations, independent of the points)."""
_INPUT_BYTES_PER_POINT = 12 + 24 + 8 + 8
"""coord (3 x fp32), grid_coord (3 x int64), segment and batch index (int64) per point."""
_GLIBC_MMAP_MAX = 32 * 1024**2
"""glibc's largest dynamic mmap threshold (64-bit): smaller blocks come from the heap."""
PREDICT_HOST_BYTES_PER_GAUSSIAN = 400
"""Host bytes per Gaussian that full-scene prediction holds while the model runs on its chunks: the scene's
arrays as stored and as features, the voxel keys and the inverse, the score rows, the labels; measured by
scripts/bench/bench_scenesplat_predict.py (docs/benchmarks.md)."""
_CPU_HEAP_RETENTION = 1.5
"""Peak RSS above the live tensors, per byte of small (heap) tensors alive at once; measured at 4k-50k
points of the SceneSplat shape (1.43, 1.52, 1.63), see `inference_memory`."""


def _lookup_table_bytes(profile: Any) -> float:
    """The stem's 5x5x5 neighbour search looks sites up in a dense int64 table over the scene's grid."""
    room = SYNTHETIC_ROOM_M if profile.data.root is None else DEFAULT_ROOM_M
    cells = 1.0
    for metres in room:
        cells *= metres / profile.data.grid_size + 5
    return 8 * cells


def _search_bytes(profile: Any, points: int) -> float:
    """Transient of the stem's 5x5x5 neighbour search over one scene, by the rule it follows.

    The dense int64 table is used only when the grid is small (`_DENSE_TABLE_MAX` cells, or
    `_DENSE_CELLS_PER_QUERY` per query), else the sorted keys (16 bytes per point); the queries run in
    blocks of up to 2^24 entries, about 20 bytes each (the keys, the lookup result, the hit mask and
    the hits' indices; measured 19-20 at 16k-50k points).
    """
    queries = 124 * points
    table = _lookup_table_bytes(profile)
    if table / 8 > max(sparse_conv._DENSE_TABLE_MAX, sparse_conv._DENSE_CELLS_PER_QUERY * (queries + points)):
        table = 16 * points
    return table + 20 * min(1 << 24, queries)


def level_factors(cfg: dict[str, Any]) -> list[float]:
    """Tokens per level relative to the input points (1/stride per pooling, see the module docstring)."""
    factors = [1.0]
    for s in cfg["stride"][: len(cfg["enc_depths"]) - 1]:
        factors.append(factors[-1] / float(s))
    return factors


def _conv_layers(cfg: dict[str, Any]) -> list[tuple[float, int, int]]:
    """(tokens factor, C_in, C_out) of every submanifold convolution: the stem and each block's CPE."""
    factors = level_factors(cfg)
    enc_ch = cfg["enc_channels"]
    convs = [(1.0, int(cfg["in_channels"]), int(enc_ch[0]))]
    convs += [(factors[s], int(c), int(c)) for s, c in enumerate(enc_ch)]
    if not (cfg["enc_mode"] or cfg["cls_mode"]):
        convs += [(factors[s], int(c), int(c)) for s, c in enumerate(cfg["dec_channels"][: len(enc_ch) - 1])]
    return convs


def conv_transient_bytes(cfg: dict[str, Any], points: int, device_type: str, element_bytes: int = 4) -> int:
    """The largest transient one sparse convolution of this backbone allocates beyond its output or gradients.

    Counted from the convolution's own chunking rule (`conv_transient_elements`): on CPU a fixed
    cache-sized chunk, on CUDA at most N x C elements of the level it runs at.
    """
    return max(
        conv_transient_elements(max(1, int(points * factor)), c_in, c_out, device_type) * element_bytes
        for factor, c_in, c_out in _conv_layers(cfg)
    )


def _config(backbone: dict[str, Any]) -> dict[str, Any]:
    config = dict(_PTV3_DEFAULTS)
    config.update(backbone)
    for key in ("order", "stride", "enc_depths", "enc_channels", "enc_num_head", "enc_patch_size",
                "dec_depths", "dec_channels", "dec_num_head"):
        value = config[key]
        config[key] = (value,) if isinstance(value, (str, int)) else tuple(value)
    return config


def points_per_scene(profile: Any, default: int = DEFAULT_POINTS_PER_SCENE, default_source: str = "") -> tuple[int, str]:
    """Points per scene the estimate uses, and where the number comes from.

    Args:
        profile: the resolved profile.
        default: the family's points per scene for real data without `data.point_budget`.
        default_source: where `default` comes from, said in parentheses after it.
    """
    data = profile.data
    budget = getattr(data, "point_budget", None)
    if budget:
        if data.root is None:
            return min(int(budget), int(data.synthetic_points)), "`data.point_budget` (synthetic rooms)"
        return int(budget), "`data.point_budget`"
    if data.root is None:
        return int(data.synthetic_points), "`data.synthetic_points`"
    return default, f"no `data.point_budget`: assumed {default} points per scene" + (
        f" ({default_source})" if default_source else "")


def _block_params(c: int, mlp_ratio: float, qkv_bias: bool) -> int:
    h = int(c * mlp_ratio)
    cpe = 27 * c * c + c + c * c + c + 2 * c
    attn = 3 * c * c + (3 * c if qkv_bias else 0) + c * c + c
    mlp = c * h + h + h * c + c
    return cpe + 2 * c + attn + 2 * c + mlp


def target_stage_names(lora: Any, num_enc: int, num_dec: int) -> set[str]:
    """Stage names (`enc{s}`, `dec{s}`) the resolved `lora` keys adapt (the preset is already applied)."""
    stages = lora.target_stages
    if stages is None:
        names = {f"enc{s}" for s in range(num_enc)}
        if not lora.encoder_only:
            names |= {f"dec{s}" for s in range(num_dec)}
        return names
    names = set()
    for stage in stages:
        if isinstance(stage, str):
            names.add(stage)
        else:
            names.add(f"enc{stage}")
            if not lora.encoder_only and stage < num_dec:
                names.add(f"dec{stage}")
    return names


def block_layer(name: str, c: int, h: int, heads: int, patch: int, factor: float, fp32_elems: float,
                dropout_elems: float, rank_elems: float, scores_stored: bool) -> dict[str, Any]:
    """One PT-v3 block's `MemoryDescription` layer (both versions store the same half-precision activations).

    Args:
        name: `enc{s}.block{i}` or `dec{s}.block{i}`.
        c: width; h: MLP hidden width; heads, patch: attention heads and patch size.
        factor: tokens of the block's level relative to the input points.
        fp32_elems: per-point elements kept in fp32 (the version's norms and scales).
        dropout_elems: per-point elements LoRA dropout sees (0 without dropout).
        rank_elems: per-point elements per unit of rank (LoRA's down projections).
        scores_stored: attention stores heads x patch scores per point (the math path).
    """
    return {
        "name": name, "width": c, "heads": heads, "seq": patch, "tokens_factor": factor,
        "fp32_elems": fp32_elems,
        # cpe linear in, qkv in, q/k/v, attention out, proj in, fc1 in, GELU in, fc2 in.
        "half_elems": 7 * c + 2 * h + 1.25 * dropout_elems,
        "rank_elems": rank_elems,
        "ckpt_elems": 2 * c,
        "checkpointable": True,
        "scores_stored": scores_stored,
    }


def describe_memory(recipe: Any) -> MemoryDescription:
    """The PTv3 description at the recipe's settings (see the module docstring for assumptions)."""
    profile, options = recipe.profile, recipe.options
    cfg = _config(options.backbone)
    lora = profile.lora
    modules = set(lora.target_modules or ["attn"])
    ratio = float(cfg["mlp_ratio"])
    enc_ch, enc_depths, enc_heads = cfg["enc_channels"], cfg["enc_depths"], cfg["enc_num_head"]
    patches = cfg["enc_patch_size"]
    num_enc = len(enc_depths)
    enc_mode = bool(cfg["enc_mode"] or cfg["cls_mode"])
    num_dec = 0 if enc_mode else num_enc - 1
    dec_ch = tuple(cfg["dec_channels"][:num_dec]) + (enc_ch[-1],)
    scores_stored = bool(cfg["enable_rpe"] or cfg["upcast_attention"] or cfg["upcast_softmax"])
    n_orders = len(cfg["order"])
    targets = target_stage_names(lora, num_enc, num_dec)

    factors = level_factors(cfg)

    frozen = 125 * cfg["in_channels"] * enc_ch[0] + 2 * enc_ch[0]
    lora_per_rank = 0
    prompt_params = 0
    layers: list[dict[str, Any]] = [{
        "name": "stem", "width": enc_ch[0], "tokens_factor": 1.0, "checkpointable": False,
        "fp32_elems": cfg["in_channels"] + 2 * enc_ch[0], "half_elems": enc_ch[0],
    }]

    def add_stage(name: str, c: int, depth: int, heads: int, patch: int, factor: float) -> None:
        nonlocal frozen, lora_per_rank, prompt_params
        h = int(c * ratio)
        adapted = name in targets
        per_block_rank = 0
        rank_elems = 0.0
        dropout_elems = 0.0
        if adapted and "attn" in modules:
            per_block_rank += (c + 3 * c) + (c + c)
            rank_elems += 2
            dropout_elems += 2 * c
        if adapted and "mlp" in modules:
            per_block_rank += (c + h) + (h + c)
            rank_elems += 2
            dropout_elems += c + h
        if adapted and lora.enable_prompt:
            outs = ([3 * c, c] if "attn" in modules else []) + ([h, c] if "mlp" in modules else [])
            ins = ([c, c] if "attn" in modules else []) + ([c, h] if "mlp" in modules else [])
            prompt_params += sum(i * _PROMPT_HIDDEN + _PROMPT_HIDDEN + _PROMPT_HIDDEN * o + o for i, o in zip(ins, outs))
        if lora.dropout <= 0:
            dropout_elems = 0.0
        for i in range(depth):
            frozen += _block_params(c, ratio, bool(cfg["qkv_bias"]))
            lora_per_rank += per_block_rank
            # LayerNorm inputs (cpe, norm1, norm2) and the conv's saved input stay fp32.
            layers.append(block_layer(f"{name}.block{i}", c, h, heads, patch, factor, 4 * c, dropout_elems,
                                      rank_elems, scores_stored))

    for s in range(num_enc):
        if s > 0:
            cin, cout = enc_ch[s - 1], enc_ch[s]
            frozen += cin * cout + cout + 2 * cout
            layers.append({"name": f"enc{s}.down", "width": cout, "tokens_factor": factors[s], "checkpointable": False,
                           "fp32_elems": cout, "half_elems": cin + cout})
        add_stage(f"enc{s}", enc_ch[s], enc_depths[s], enc_heads[s], patches[s], factors[s])
    for s in reversed(range(num_dec)):
        cin, skip, cout = dec_ch[s + 1], enc_ch[s], dec_ch[s]
        frozen += (cin * cout + 3 * cout) + (skip * cout + 3 * cout)
        layers.append({"name": f"dec{s}.up", "width": cout, "tokens_factor": factors[s], "checkpointable": False,
                       "fp32_elems": 2 * cout, "half_elems": skip + 2 * cout})
        add_stage(f"dec{s}", cout, cfg["dec_depths"][s], cfg["dec_num_head"][s], patches[s], factors[s])

    out = output_width(cfg)
    task = options.task
    other_trainable = 0
    input_bytes = _INPUT_BYTES_PER_POINT + 4 * cfg["in_channels"]
    if task == "semseg":
        classes = options.num_classes
        head = out * classes + classes
        if profile.model.train_head:
            other_trainable += head
        else:
            frozen += head
        layers.append({"name": "seg_head", "width": classes, "tokens_factor": 1.0, "checkpointable": False,
                       "fp32_elems": 2 * classes, "half_elems": out})
    else:
        lang_dim = profile.model.lang_dim or out
        input_bytes += 4 * lang_dim  # the per-point SigLIP target features
        layers.append({"name": "lang_loss", "width": out, "tokens_factor": 1.0, "checkpointable": False,
                       "fp32_elems": 4 * out, "half_elems": 0})
    other_trainable += prompt_params

    index_bytes = 16 * _NEIGHBOURS_K5
    for f in factors[:num_enc]:
        index_bytes += f * (3 * 8 * n_orders + 16 * _NEIGHBOURS_K3 + 16)
    points, source = points_per_scene(profile)
    # Counted in fp32 whatever `mixed_precision` says: the planner reuses one description while it
    # varies the precision, and under bf16 this small term is merely counted twice over.
    conv_bytes = conv_transient_bytes(cfg, points, profile.device_type)
    notes = [f"points per scene: {points} ({source})",
             "PTv3 attention: O(points x patch) through SDPA/flash, no stored scores"
             if not scores_stored else "PTv3 attention: math path (enable_rpe/upcast) stores heads x patch per point"]
    return MemoryDescription(
        frozen_params=int(frozen),
        lora_params=int(lora_per_rank * lora.r),
        other_trainable_params=int(other_trainable),
        tokens_per_sample=points,
        layers=layers,
        rank=lora.r,
        lora_params_per_rank=int(lora_per_rank),
        input_bytes_per_token=float(input_bytes),
        index_bytes_per_token=float(index_bytes),
        fixed_bytes_per_sample=_lookup_table_bytes(profile) + _SEARCH_BLOCK_BYTES + conv_bytes,
        lever=Lever("points per scene", "data.point_budget", max(64, points // 2)),
        tokens_vary=True,
        notes=notes,
    )


def _block_phases(c: int, mlp_ratio: float, tokens: float, device_type: str) -> list[list[float]]:
    """Tensors (elements each) alive at the widest moments of one block run without gradients.

    MLP: the block input, the CPE conv's input, the CPE branch, the attention residual, norm2's output,
    fc1's output and GELU's (6 x C, 2 x h). Attention: the first four, norm1's output, and qkv projected
    and gathered into patch order (5 x C, 2 x 3C). CPE: input, conv input, conv output and the conv's two
    chunk buffers (`conv_transient_elements`).
    """
    h = int(c * mlp_ratio)
    chunk = conv_transient_elements(max(1, int(tokens)), c, c, device_type) / 2
    return [[c * tokens] * 6 + [h * tokens] * 2,
            [c * tokens] * 5 + [3 * c * tokens] * 2,
            [c * tokens] * 3 + [chunk, chunk]]


def _forward_phases(cfg: dict[str, Any], points: int, head_width: int, device_type: str) -> list[list[float]]:
    """Every widest moment of one forward without gradients, as the tensors (elements each) alive then."""
    factors = level_factors(cfg)
    enc_ch = cfg["enc_channels"]
    ratio = float(cfg["mlp_ratio"])
    n = [points * f for f in factors]
    c0, c_in = int(enc_ch[0]), int(cfg["in_channels"])
    chunk = conv_transient_elements(points, c_in, c0, device_type) / 2
    # Stem: input features, conv output plus its chunks, BatchNorm and GELU outputs.
    phases = [[c_in * n[0]] + [c0 * n[0]] * 3 + [chunk, chunk]]
    kept: list[float] = []  # encoder outputs held (as pooling parents) for the decoder's skip connections
    for s in range(len(enc_ch)):
        if s > 0:
            kept.append(n[s - 1] * enc_ch[s - 1])
            # Pooling: proj at the finer level, segment sum and mean at the coarser one.
            phases.append(kept + [n[s - 1] * enc_ch[s]] + [n[s] * enc_ch[s]] * 3)
        phases += [kept + phase for phase in _block_phases(enc_ch[s], ratio, n[s], device_type)]
    width = enc_ch[-1]
    if not (cfg["enc_mode"] or cfg["cls_mode"]):
        dec_ch = cfg["dec_channels"]
        for s in reversed(range(len(enc_ch) - 1)):
            skip = kept.pop()  # this level's encoder output, consumed by its unpooling
            cd = dec_ch[s]
            # Unpooling: the skip and coarse features, their projections, the gather and the sum.
            phases.append(kept + [skip, n[s + 1] * width, n[s + 1] * cd] + [n[s] * cd] * 3)
            phases += [kept + phase for phase in _block_phases(cd, ratio, n[s], device_type)]
            width = cd
    phases.append([n[0] * width, n[0] * head_width, n[0] * head_width])
    return phases


def inference_memory(recipe: Any, batch_size: int = 1, device_type: str | None = None, points: int | None = None,
                     scene_points: int | None = None) -> dict[str, int]:
    """Peak bytes of one forward pass without gradients (prediction, evaluation) at the recipe's points.

    `points` replaces the recipe's points per scene (a chunk of a larger scene); with `scene_points`,
    `scene` adds the host bytes full-scene prediction holds for a scene of that many Gaussians
    (`PREDICT_HOST_BYTES_PER_GAUSSIAN` each; not part of `expected`, which is the device's peak).

    Parts: `weights` (every parameter in fp32, LoRA unmerged included), `inputs` and `index` (per
    point, as in training), `activations` (`_forward_phases`: the most tensors alive at once, each
    sparse convolution's chunk buffers included), `search` (the stem's neighbour search: dense lookup
    table and query blocks; it runs before the blocks and is freed, so only the larger of
    `activations` and `search` counts) and, on CPU, `heap_retention`: glibc serves tensors under its
    largest mmap threshold (32 MiB) from the heap and keeps freed heap blocks resident, so while the
    blocks run the peak RSS exceeds the live tensors by about `_CPU_HEAP_RETENTION` x the most such
    small activation tensors alive at once (measured 1.4-1.6x at 4k-50k points of the SceneSplat shape,
    scripts/bench/bench_ptv3_memory.py). `expected` is weights + inputs + index + the larger of
    (activations + heap_retention) and search; no safety margin.
    """
    profile, options = recipe.profile, recipe.options
    cfg = _config(options.backbone)
    description = describe_memory(recipe)
    device_type = device_type or profile.device_type
    per_sample = points or description.tokens_per_sample
    points = per_sample * batch_size
    head = options.num_classes if options.task == "semseg" else output_width(cfg)
    inputs = points * description.input_bytes_per_token
    index = points * description.index_bytes_per_token
    live = small = 0.0
    for phase in _forward_phases(cfg, points, head, device_type):
        live = max(live, 4 * sum(phase))
        small = max(small, 4 * sum(e for e in phase if 4 * e < _GLIBC_MMAP_MAX))
    parts = {
        "weights": 4 * (description.frozen_params + description.lora_params + description.other_trainable_params),
        "inputs": int(inputs),
        "index": int(index),
        "activations": int(live),
        "search": int(batch_size * _search_bytes(profile, per_sample)),
        "heap_retention": int(_CPU_HEAP_RETENTION * small) if device_type == "cpu" else 0,
    }
    parts["expected"] = (parts["weights"] + parts["inputs"] + parts["index"]
                         + max(parts["activations"] + parts["heap_retention"], parts["search"]))
    if scene_points is not None:
        parts["scene"] = int(scene_points * PREDICT_HOST_BYTES_PER_GAUSSIAN)
    return parts
