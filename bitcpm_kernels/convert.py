"""Convert a ternary QAT checkpoint into quantized weights.

A QAT checkpoint stores full-precision latent weights. This converter
quantizes the seven projections of every decoder layer (the tensors that
`BitLinear` quantizes) and copies every other tensor bit for bit. It writes
one of two formats:

- pseudo-quantized (default): each projection weight becomes
  `W_hat = Q * s` in the input dtype, so the checkpoint loads as a plain
  model with no quantization library;
- packed (`--packed`): each `<module>.weight` becomes three tensors,
  `<module>.weight_packed` (uint8, `(N, ceil(K / 4))`, 2-bit codes),
  `<module>.weight_scale` (float32, the scale shape of the group size) and
  `<module>.weight_shape` (int64 `[N, K]`). `load_packed_model` and
  `load_packed_state_dict` read it back.

The input is a `pytorch_model.bin` (read only with `torch.load(...,
weights_only=True)`), a `.safetensors` file, a sharded checkpoint with its
`*.index.json`, or a folder that contains one of these. Shards are processed one at
a time, so peak memory stays near one input shard plus one output shard.

Usage::

    python -m bitcpm_kernels.convert --input_bin ckpt/ --output ckpt-ternary/
    python -m bitcpm_kernels.convert --input_bin pytorch_model.bin --output out.bin --group_size 128
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

QUANT_TYPES = ("ternary",)

# The tensors that `BitLinear` quantizes in a BitCPM (or Llama/MiniCPM) model.
DEFAULT_INCLUDE = tuple(
    f"*.{name}.weight" for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
)

PACKED_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape")

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Checkpoint names searched for, in order, when the input is a folder.
CHECKPOINT_NAMES = (SAFETENSORS_INDEX, "model.safetensors", BIN_INDEX, "pytorch_model.bin")


class ConversionError(Exception):
    """An input, option or output that the converter cannot accept."""


@dataclass
class ConvertOptions:
    quant_type: str = "ternary"
    # None: the input config's quant_group_size (-1 without one) and quant_eps (1e-5 without one).
    group_size: int | None = None
    eps: float | None = None
    packed: bool = False
    force: bool = False
    include: tuple[str, ...] = DEFAULT_INCLUDE
    progress: bool = True


@dataclass
class ConvertReport:
    """Summary of one conversion: the tensors quantized and copied, and the files written."""

    output: Path
    quantized: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Reading checkpoints


@dataclass
class CheckpointLayout:
    """Location of a checkpoint's tensors: the shard files in order, and an optional index."""

    shards: list[Path]
    fmt: str  # "safetensors" or "bin"
    index_path: Path | None = None
    index: dict | None = None
    folder: Path | None = None


def _format_of(path: Path) -> str:
    name = path.name
    if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        return "safetensors"
    if name.endswith(".bin") or name.endswith(".bin.index.json") or name.endswith(".pt") or name.endswith(".pth"):
        return "bin"
    raise ConversionError(
        f"{path}: unknown checkpoint type; expected .bin, .pt, .pth, .safetensors or an *.index.json of them"
    )


def locate_checkpoint(path: str | os.PathLike) -> CheckpointLayout:
    """Find the shard files of the checkpoint at `path` (a file or a model folder)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: file or folder not found")

    folder = None
    if path.is_dir():
        folder = path
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ConversionError(f"{path}: no checkpoint found; expected one of {', '.join(CHECKPOINT_NAMES)}")

    fmt = _format_of(path)
    if not path.name.endswith(".index.json"):
        return CheckpointLayout(shards=[path], fmt=fmt, folder=folder)

    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConversionError(f"{path}: invalid checkpoint index ({err})") from err
    shard_names = list(dict.fromkeys(weight_map.values()))
    shards = [path.parent / name for name in shard_names]
    for shard in shards:
        if not shard.is_file():
            raise ConversionError(f"{shard}: shard listed in {path.name} not found")
    return CheckpointLayout(shards=shards, fmt=fmt, index_path=path, index=index, folder=folder or path.parent)


def _read_shard(path: Path, fmt: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the (name, tensor) pairs of one shard, loading tensors lazily where the format allows."""
    if fmt == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            names = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise ConversionError(f"{path}: cannot read safetensors file ({err})") from err
        for name in names:
            yield name, handle.get_tensor(name)
        return

    # A zip-format torch file can be memory-mapped, so tensors load on first use.
    mmap = zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as err:
        # A file that is not a torch checkpoint can fail inside the unpickler
        # with any of these. Each one means the file is unreadable.
        raise ConversionError(f"{path}: cannot read torch checkpoint ({err!r})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: not a state dict of tensors")
    yield from state.items()


def _shard_tensor_count(path: Path, fmt: str) -> int | None:
    if fmt != "safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return len(list(handle.keys()))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConversionError(f"{path}: cannot read safetensors file ({err})") from err


# ---------------------------------------------------------------------------
# Quantizing one tensor


def is_quantized_name(name: str, include: tuple[str, ...] = DEFAULT_INCLUDE) -> bool:
    """Return whether the tensor `name` is one that `BitLinear` quantizes."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include)


def looks_pseudo_quantized(weight: torch.Tensor, group_size: int = -1) -> bool:
    """Check whether every group of `weight` contains only the values 0, -s and +s for one s.

    That is what the ternary quantizer writes, so such a weight has at most
    three distinct values per group. Groups are rows for `group_size` -1 and
    0, else `group_size` consecutive elements of a row. An all-zero tensor does
    not count, because quantizing it again gives zeros again.
    """
    if weight.dim() != 2 or weight.numel() == 0 or not torch.any(weight != 0):
        return False
    n, k = weight.shape
    if group_size > 0 and k % group_size == 0:
        magnitudes = weight.detach().abs().reshape(n * (k // group_size), group_size)
    else:
        magnitudes = weight.detach().abs()

    largest = magnitudes.amax(dim=-1)
    smallest_nonzero = torch.where(magnitudes > 0, magnitudes, torch.full_like(magnitudes, float("inf"))).amin(dim=-1)
    one_magnitude = (largest == 0) | (smallest_nonzero == largest)
    return bool(one_magnitude.all())


# Rows checked first: a latent weight fails the check on them almost always,
# so the whole tensor is read only for weights that really look quantized.
_SAMPLE_ROWS = 64


def pseudo_quantized_group(weight: torch.Tensor, group_size: int) -> int | None:
    """Return a group size under which `weight` looks pseudo-quantized, or None.

    A checkpoint converted with a finer grouping than the one requested now
    (group_size=16, then -1) has more than three values per row, so the check
    also tries per-row groups and every power-of-two group size that divides K.
    """
    k = weight.shape[1] if weight.dim() == 2 else 0
    powers = []
    size = 2
    while size < k:
        if k % size == 0:
            powers.append(size)
        size *= 2
    # Largest first, so the error names the grouping the weight was made with
    # rather than a finer one that it satisfies as well.
    candidates = [group_size, -1, *reversed(powers)]

    sample = weight[:_SAMPLE_ROWS]
    for candidate in dict.fromkeys(candidates):
        if looks_pseudo_quantized(sample, candidate) and looks_pseudo_quantized(weight, candidate):
            return candidate
    return None


def quantize_tensor(name: str, weight: torch.Tensor, options: ConvertOptions) -> dict[str, torch.Tensor]:
    """Quantize one projection weight into the output tensors of the chosen format."""
    import bitcpm_kernels as bk

    if weight.dim() != 2:
        raise ConversionError(f"{name}: expected a 2-D linear weight, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ConversionError(f"{name}: expected a floating-point weight, got {weight.dtype}")
    n, k = weight.shape
    if options.group_size > 0 and k % options.group_size != 0:
        raise ConversionError(
            f"{name}: K={k} is not a multiple of group_size={options.group_size}; choose a group size that divides K"
        )
    quantized_group = None if options.force else pseudo_quantized_group(weight, options.group_size)
    if quantized_group is not None:
        raise ConversionError(
            f"{name}: with group_size={quantized_group} the weight has at most three distinct "
            "values per group, so the checkpoint looks pseudo-quantized. Quantizing it again "
            "would shrink the scales. Convert the QAT checkpoint instead, or pass --force."
        )

    try:
        codes, scales = bk.ternary_quantize(weight.contiguous(), group_size=options.group_size, eps=options.eps)
    except ValueError as err:
        raise ConversionError(f"{name}: {err}") from err

    prefix = name[: -len("weight")]
    if options.packed:
        return {
            prefix + "weight_packed": bk.pack_ternary(codes),
            prefix + "weight_scale": scales.contiguous(),
            prefix + "weight_shape": torch.tensor([n, k], dtype=torch.int64),
        }
    w_hat = bk.ternary_dequantize(codes, scales, group_size=options.group_size, dtype=weight.dtype)
    return {name: w_hat}


# ---------------------------------------------------------------------------
# Writing


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, fmt: str, metadata: dict | None) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata=metadata or {"format": "pt"})
    else:
        torch.save(tensors, path)


def _check_paths(layout: CheckpointLayout, input_path: Path, output: Path) -> str:
    """Validate the output path and return "file" or "folder" mode."""
    inputs = [p.resolve() for p in layout.shards]
    if layout.index_path is not None:
        inputs.append(layout.index_path.resolve())
    if output.resolve() in inputs:
        raise ConversionError(f"{output}: the output would overwrite the input; choose another path")

    if output.suffix in (".bin", ".safetensors", ".pt", ".pth"):
        if len(layout.shards) != 1 or layout.index_path is not None:
            raise ConversionError(
                f"{output}: a sharded checkpoint converts into a folder; pass a folder as --output"
            )
        if _format_of(output) != layout.fmt:
            raise ConversionError(
                f"{output}: the output format must match the input ({layout.fmt}); use a matching suffix"
            )
        return "file"

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConversionError(f"{output}: already exists and is not an empty folder; choose a new path")
    if input_path.is_dir() and output.resolve() == input_path.resolve():
        raise ConversionError(f"{output}: the output would overwrite the input folder; choose another path")
    return "folder"


def _convert_shard(
    shard: Path,
    fmt: str,
    options: ConvertOptions,
    report: ConvertReport,
    progress,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in _read_shard(shard, fmt):
        if name.rsplit(".", 1)[-1] in PACKED_SUFFIXES:
            raise ConversionError(f"{shard}: tensor {name} shows the checkpoint is already packed")
        if is_quantized_name(name, options.include):
            out.update(quantize_tensor(name, tensor, options))
            report.quantized.append(name)
        else:
            # Copied unchanged: same dtype, shape and bytes.
            out[name] = tensor
            report.copied.append(name)
        progress.update(1)
    return out


def _update_config(config_path: Path, options: ConvertOptions) -> None:
    """Mark a BitCPM config.json as converted, so the model builds plain linears."""
    config = json.loads(config_path.read_text())
    if config.get("model_type") == "bitcpm":
        config["weight_format"] = "pseudo_quantized"
        config["quant_group_size"] = options.group_size
        config["quant_eps"] = options.eps
    if options.packed:
        config["bitcpm_packed"] = {"quant_type": options.quant_type, "group_size": options.group_size}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def convert_checkpoint(input_path: str | os.PathLike, output: str | os.PathLike, options: ConvertOptions | None = None) -> ConvertReport:
    """Convert the checkpoint at `input_path` and write it to `output`.

    `output` is a file when it ends in .bin/.pt/.pth/.safetensors (single-file
    input only) and a new folder otherwise. A folder output also receives the
    input folder's other files (config, tokenizer, remote code), and a BitCPM
    config.json gets `weight_format = "pseudo_quantized"`. Everything is
    written under a temporary name and renamed at the end, so a failure
    leaves no partial output.
    """
    from tqdm.auto import tqdm

    options = replace(options or ConvertOptions())
    if options.quant_type not in QUANT_TYPES:
        raise ConversionError(f"quant_type={options.quant_type!r} is not supported; choose one of {QUANT_TYPES}")

    input_path = Path(input_path)
    output = Path(output)
    layout = locate_checkpoint(input_path)
    _resolve_quantizer_settings(layout, options)
    mode = _check_paths(layout, input_path, output)

    counts = [_shard_tensor_count(shard, layout.fmt) for shard in layout.shards]
    total = sum(counts) if all(c is not None for c in counts) else None
    report = ConvertReport(output=output)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    # mkdtemp creates the folder with mode 0700; the renamed output should get
    # the permissions of any folder the user creates.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        weight_map: dict[str, str] = {}
        total_size = 0
        with tqdm(total=total, unit="tensor", desc="convert", disable=not options.progress) as progress:
            for shard in layout.shards:
                tensors = _convert_shard(shard, layout.fmt, options, report, progress)
                shard_name = output.name if mode == "file" else shard.name
                _save_shard(tensors, staging / shard_name, layout.fmt, None)
                for name, tensor in tensors.items():
                    weight_map[name] = shard_name
                    total_size += tensor.numel() * tensor.element_size()
                report.files.append(shard_name)
                del tensors

        if not report.quantized:
            raise ConversionError(
                f"{input_path}: no tensor matches {', '.join(options.include)}; nothing to quantize"
            )

        if mode == "file":
            os.replace(staging / output.name, output)
            return report

        if layout.index_path is not None:
            index = dict(layout.index)
            index["metadata"] = {**(layout.index.get("metadata") or {}), "total_size": total_size}
            index["weight_map"] = dict(sorted(weight_map.items()))
            (staging / layout.index_path.name).write_text(json.dumps(index, indent=2) + "\n")
            report.files.append(layout.index_path.name)

        if layout.folder is not None:
            written = set(report.files)
            for item in sorted(layout.folder.iterdir()):
                if item.is_file() and item.name not in written and not _is_weight_file(item, layout):
                    shutil.copy2(item, staging / item.name)
                    report.files.append(item.name)
            if (staging / "config.json").is_file():
                _update_config(staging / "config.json", options)

        if output.exists():
            output.rmdir()  # empty, checked above
        os.replace(staging, output)
        return report
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _resolve_quantizer_settings(layout: CheckpointLayout, options: ConvertOptions) -> None:
    """Fill in the group size and eps: the requested ones, else the ones the QAT model trained with."""
    config: dict = {}
    config_path = layout.folder / "config.json" if layout.folder is not None else None
    if config_path is not None and config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except ValueError as err:
            raise ConversionError(f"{config_path}: invalid JSON ({err})") from err

    if "bitcpm_packed" in config:
        raise ConversionError(
            f"{layout.folder} is already packed (its config.json has bitcpm_packed); "
            "convert the QAT checkpoint instead"
        )
    if config.get("weight_format") == "pseudo_quantized" and not options.force:
        raise ConversionError(
            f"{layout.folder} is already pseudo-quantized (its config.json has "
            "weight_format='pseudo_quantized'), and quantizing it again would shrink the scales. "
            "Convert the QAT checkpoint instead, or pass --force."
        )

    for option, key, default in (("group_size", "quant_group_size", -1), ("eps", "quant_eps", 1e-5)):
        trained = config.get(key)
        requested = getattr(options, option)
        if requested is None:
            setattr(options, option, trained if trained is not None else default)
        elif trained is not None and requested != trained:
            logger.warning(
                "%s=%s differs from %s=%s in %s, so the converted model will not compute "
                "what the QAT model computed",
                option,
                requested,
                key,
                trained,
                config_path,
            )

    if options.group_size < -1:
        raise ConversionError(f"group_size={options.group_size} is invalid; use -1, 0 or a positive size")
    if not options.eps > 0:
        raise ConversionError(f"eps={options.eps} is invalid; use a positive number such as 1e-5")


def _is_weight_file(path: Path, layout: CheckpointLayout) -> bool:
    """Return whether `path` is a checkpoint file that must not be copied next to the output."""
    if path in layout.shards or path == layout.index_path:
        return True
    return path.suffix in (".bin", ".safetensors", ".pt", ".pth") or path.name.endswith(".index.json")


# ---------------------------------------------------------------------------
# Loading packed checkpoints back


def _infer_group_size(n: int, k: int, scale: torch.Tensor) -> int:
    rows, groups = scale.shape
    if rows == 1 and groups == 1 and n > 1:
        return 0
    if groups == 1:
        return -1
    return k // groups


def unpack_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Replace each packed triple (`weight_packed`, `weight_scale`, `weight_shape`) by a dense `weight`.

    The dense weight is `W_hat` in `dtype`, which defaults to the most common
    floating dtype among the other tensors (float32 when there are none).
    """
    import bitcpm_kernels as bk

    if dtype is None:
        float_dtypes = [t.dtype for n, t in state.items() if t.is_floating_point() and not n.endswith("weight_scale")]
        dtype = max(set(float_dtypes), key=float_dtypes.count) if float_dtypes else torch.float32

    dense: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(".weight_packed"):
            prefix = name[: -len("weight_packed")]
            try:
                scale = state[prefix + "weight_scale"]
                n, k = (int(v) for v in state[prefix + "weight_shape"])
            except KeyError as err:
                raise ConversionError(f"{name}: the packed weight has no {err.args[0]}") from err
            group_size = _infer_group_size(n, k, scale)
            codes = bk.unpack_ternary(tensor, k)
            dense[prefix + "weight"] = bk.ternary_dequantize(codes, scale, group_size=group_size, dtype=dtype)
        elif name.endswith(".weight_scale") or name.endswith(".weight_shape"):
            continue
        else:
            dense[name] = tensor
    return dense


def load_packed_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read a packed checkpoint (file, index or folder) into a dense state dict of `W_hat` weights."""
    layout = locate_checkpoint(path)
    state: dict[str, torch.Tensor] = {}
    for shard in layout.shards:
        state.update(_read_shard(shard, layout.fmt))
    return unpack_state_dict(state, dtype)


def load_packed_model(folder: str | os.PathLike, dtype: torch.dtype | None = None):
    """Load a packed BitCPM folder written by `--packed` into a `BitCPMForCausalLM`.

    The projections are plain linears that contain `W_hat`, so the model runs
    without the quantizer and matches the QAT model's fake-quantized forward.
    """
    from .models import BitCPMConfig, BitCPMForCausalLM

    folder = Path(folder)
    config = BitCPMConfig.from_pretrained(folder)
    if not getattr(config, "bitcpm_packed", None):
        raise ConversionError(f"{folder}: config.json has no bitcpm_packed entry; this is not a packed checkpoint")
    config.bitcpm_packed = None
    config.weight_format = "pseudo_quantized"

    state = load_packed_state_dict(folder, dtype)
    dtype = dtype or state["model.embed_tokens.weight"].dtype
    model = BitCPMForCausalLM(config).to(dtype)
    if config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitcpm-convert",
        description="Quantize a ternary QAT checkpoint into pseudo-quantized or packed 2-bit weights.",
    )
    parser.add_argument(
        "--input_bin",
        required=True,
        help="pytorch_model.bin, .safetensors, *.index.json or a model folder that contains one of them",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output file (.bin/.safetensors, single-file input only) or a new folder",
    )
    parser.add_argument("--quant_type", default="ternary", help="quantizer; only 'ternary' is supported")
    parser.add_argument(
        "--group_size",
        type=int,
        default=None,
        help="-1: one scale per output row; 0: one per tensor; g > 0: one per g input features (must divide K). "
        "Default: quant_group_size from the input folder's config.json, else -1",
    )
    parser.add_argument(
        "--eps",
        type=float,
        default=None,
        help="lower bound of every scale. Default: quant_eps from the input folder's config.json, else 1e-5",
    )
    parser.add_argument("--packed", action="store_true", help="write 2-bit codes plus float32 scales")
    parser.add_argument(
        "--force", action="store_true", help="quantize even if the input already looks pseudo-quantized"
    )
    parser.add_argument(
        "--include",
        nargs="+",
        default=list(DEFAULT_INCLUDE),
        metavar="PATTERN",
        help="fnmatch patterns of tensor names to quantize (default: the seven projections of each layer)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    options = ConvertOptions(
        quant_type=args.quant_type,
        group_size=args.group_size,
        eps=args.eps,
        packed=args.packed,
        force=args.force,
        include=tuple(args.include),
        progress=not args.no_progress,
    )
    try:
        report = convert_checkpoint(args.input_bin, args.output, options)
    except ConversionError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    kind = "packed 2-bit" if options.packed else "pseudo-quantized"
    print(
        f"wrote {report.output}: {len(report.quantized)} tensors {kind}, "
        f"{len(report.copied)} copied unchanged ({', '.join(report.files)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
