"""``python -m hf_robust_distill.convert_checkpoint``: tiny timm ViTs and torchvision/timm ResNets saved
in each published layout (raw, DDP, the DAD code's, RobustBench's, Madry's, timm's EMA with an
argparse Namespace) convert to transformers models whose logits, hidden states and attention maps
equal the source model's in float64, with a processor that makes the source's evaluation pixels."""

import argparse
import json
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_robust_distill.convert import ConversionRecord, convert_checkpoint
from hf_robust_distill.convert.checkpoint import main

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS = ",".join(str(i) for i in range(10))


class NormalizeByChannelMeanStd(nn.Module):
    """advertorch's layer, as the DAD code wraps its models with it: (3,) buffers."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))


class ImageNormalizer(nn.Module):
    """RobustBench's: (1, 3, 1, 1) buffers."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))


class InputNormalize(nn.Module):
    """Madry's ``robustness``: (3, 1, 1) buffers named new_mean/new_std."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.tensor(std)[..., None, None])


def tiny_timm_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=32, depth=2, num_heads=2, img_size=32,
                              patch_size=8, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # timm starts its head at zero: give it weights that tell classes apart
        model.head.weight.normal_(std=0.5)
        model.head.bias.normal_(std=0.1)
    return model


def tiny_resnet(library="torchvision", block="basic", seed=0):
    torch.manual_seed(seed)
    layers = [1, 2, 1, 1]
    if library == "torchvision":
        builder = torchvision.models.resnet.BasicBlock if block == "basic" else torchvision.models.resnet.Bottleneck
        model = torchvision.models.ResNet(builder, layers, num_classes=10)
    else:
        model = timm.create_model("resnet18" if block == "basic" else "resnet50", layers=layers, num_classes=10)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(std=0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def save_layout(model, folder, layout: str) -> str:
    """``model`` saved as the named published layout; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if layout == "raw":
        torch.save(state, folder / "model.pth")
        return str(folder / "model.pth")
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        return str(folder / "model.safetensors")
    if layout == "ddp":  # a DDP module's state dict under timm's "state_dict", as a .bin
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "pytorch_model.bin")
        return str(folder / "pytorch_model.bin")
    if layout == "dad":  # the official code: Sequential(NormalizeByChannelMeanStd, model) under "model"
        wrapped = nn.Sequential(NormalizeByChannelMeanStd(MEAN, STD), model)
        torch.save({"model": wrapped.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
                   folder / "checkpoint.pth")
        return str(folder / "checkpoint.pth")
    if layout == "robustbench":
        wrapped = nn.Sequential(OrderedDict(normalize=ImageNormalizer(MEAN, STD), model=model))
        torch.save(wrapped.state_dict(), folder / "robustbench.pt")
        return str(folder / "robustbench.pt")
    if layout == "madry":
        normalizer = InputNormalize(MEAN, STD)
        inner = {**{f"normalizer.{k}": v for k, v in normalizer.state_dict().items()},
                 **{f"model.{k}": v for k, v in state.items()}}
        attacker = {f"attacker.{k.replace('normalizer.', 'normalize.')}": v for k, v in inner.items()}
        torch.save({"model": {f"module.{k}": v for k, v in {**inner, **attacker}.items()}, "epoch": 5,
                    "schedule": None}, folder / "madry.pt")
        return str(folder / "madry.pt")
    if layout == "ema":  # easyrobust / timm's CheckpointSaver: the EMA beside the weights, and the args
        noisy = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
        torch.save({"epoch": 9, "arch": "tiny", "state_dict": noisy, "state_dict_ema": state,
                    "args": argparse.Namespace(lr=0.1, model="tiny"), "metric": 12.5}, folder / "model_best.pth.tar")
        return str(folder / "model_best.pth.tar")
    raise ValueError(layout)


LAYOUT_FLAGS = {"raw": ["--mean", *map(str, MEAN), "--std", *map(str, STD)], "ema": ["--use_ema", "--allow_pickle"]}
LAYOUT_FLAGS["safetensors"] = LAYOUT_FLAGS["ddp"] = LAYOUT_FLAGS["raw"]
LAYOUT_FLAGS["ema"] = LAYOUT_FLAGS["ema"] + LAYOUT_FLAGS["raw"]


def converted(source_file, out, architecture, layout, *extra, attention="sdpa"):
    """The converted model in float64; transformers' ``eager`` attention (the one that returns maps)
    takes its softmax in float32, so logits and hidden states are compared under ``sdpa``."""
    if not out.exists():
        main([source_file, str(out), "--architecture", architecture, "--class_names", DIGITS,
              *LAYOUT_FLAGS.get(layout, []), *extra])
    kwargs = {"attn_implementation": attention} if attention else {}
    return AutoModelForImageClassification.from_pretrained(out, **kwargs).double().eval()


def timm_vit_outputs(model, pixels):
    """Logits, the embeddings and each block's output, and each block's attention as timm's own
    unfused path computes it."""
    model = model.double()
    hidden, maps = [], []
    hooks = [model.patch_drop.register_forward_hook(lambda m, a, o: hidden.append(o))]
    for block in model.blocks:
        block.attn.fused_attn = False
        hooks.append(block.register_forward_hook(lambda m, a, o: hidden.append(o)))
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, a, o: maps.append(o)))
    with torch.no_grad():
        logits = model(pixels)
    for hook in hooks:
        hook.remove()
    return logits, hidden, maps


def vit_attention_float64(model, pixels):
    """The converted ViT's attention maps from its own q and k projections, softmax in float64."""
    layers = model.vit.layers
    kept = {}
    hooks = [getattr(layer.attention, f"{name}_proj").register_forward_hook(
        lambda m, a, o, key=(i, name): kept.__setitem__(key, o)) for i, layer in enumerate(layers) for name in "qk"]
    model(pixel_values=pixels)
    for hook in hooks:
        hook.remove()
    heads = model.config.num_attention_heads
    maps = []
    for i in range(len(layers)):
        q, k = (kept[(i, n)].unflatten(-1, (heads, -1)).transpose(1, 2) for n in "qk")
        maps.append(((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1))
    return maps


def resnet_outputs(model, pixels):
    model = model.double()
    hidden = []
    stem = model.maxpool
    hooks = [m.register_forward_hook(lambda m, a, o: hidden.append(o))
             for m in (stem, model.layer1, model.layer2, model.layer3, model.layer4)]
    with torch.no_grad():
        logits = model(pixels)
    for hook in hooks:
        hook.remove()
    return logits, hidden


def max_difference(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


LAYOUTS = ["raw", "safetensors", "ddp", "dad", "robustbench", "madry", "ema"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_timm_vit_in_every_layout_converts_exactly(tmp_path, layout):
    source = tiny_timm_vit()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = converted(save_layout(source, tmp_path / "src", layout), tmp_path / "out", "vit", layout, "--num_heads", "2")
    assert type(model).__name__ == "ViTForImageClassification" and model.config.layer_norm_eps == 1e-6
    eager = converted(None, tmp_path / "out", "vit", layout, attention="eager")
    with torch.no_grad():
        ours = model(pixel_values=pixels, output_hidden_states=True)
        attentions = vit_attention_float64(model, pixels)
        eager_maps = eager(pixel_values=pixels, output_attentions=True).attentions
    logits, hidden, maps = timm_vit_outputs(source, pixels)
    assert float((ours.logits - logits).abs().max()) < 1e-8 and logits.std() > 0.1
    assert len(ours.hidden_states) == len(hidden) == 3 and max_difference(ours.hidden_states, hidden) < 1e-8
    assert len(attentions) == len(maps) == 2 and max_difference(attentions, maps) < 1e-8
    assert max_difference(eager_maps, maps) < 1e-6  # transformers' eager softmax runs in float32
    record = ConversionRecord.load(str(tmp_path / "out"))
    expected_from = "--mean/--std" if layout in LAYOUT_FLAGS else "the checkpoint's normalisation buffers"
    assert record.normalisation_from.startswith(expected_from) and record.architecture == "vit"
    assert record.keys_dropped == ({"madry": sorted(k for k in ["normalizer.new_mean", "normalizer.new_std"])}.get(
        layout, ["0.mean", "0.std"] if layout == "dad" else ["normalize.mean", "normalize.std"]
        if layout == "robustbench" else [])) or layout == "madry" and "attacker.model.head.weight" in record.keys_dropped
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert tuple(processor.data_config["mean"]) == pytest.approx(MEAN) and processor.data_config["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("library,block", [("torchvision", "basic"), ("torchvision", "bottleneck"), ("timm", "basic"),
                                           ("timm", "bottleneck")])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_torchvision_and_timm_resnets_convert_exactly(tmp_path, library, block, layout):
    source = tiny_resnet(library, block)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = converted(save_layout(source, tmp_path / "src", layout), tmp_path / "out", "resnet", layout,
                      attention=None)
    assert type(model).__name__ == "ResNetForImageClassification"
    assert model.config.layer_type == block and model.config.depths == [1, 2, 1, 1]
    with torch.no_grad():
        ours = model(pixel_values=pixels, output_hidden_states=True)
    logits, hidden = resnet_outputs(source, pixels)
    assert float((ours.logits - logits).abs().max()) < 1e-8 and logits.std() > 1e-3
    assert max_difference(ours.hidden_states, hidden) < 1e-8


def photos():
    from skimage import data

    return [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]


@pytest.mark.parametrize("settings", [dict(crop_pct=0.875, interpolation="bilinear"),
                                      dict(crop_pct=0.9, interpolation="bicubic"),
                                      dict(crop_pct=0.95, interpolation="bicubic")])
def test_the_processor_makes_the_sources_evaluation_pixels_on_real_photos(tmp_path, settings):
    """torchvision's Resize(256) + CenterCrop(224) (RobustBench, Madry), and timm's evaluation transform
    at the DAD code's crops: the same tensors, to the bit; ImageResizer gives them unnormalised."""
    from torchvision import transforms

    from hf_robust_distill.data.images import ImageResizer

    source = save_layout(tiny_resnet(), tmp_path / "src", "robustbench")
    main([source, str(tmp_path / "out"), "--architecture", "resnet", "--crop_pct", str(settings["crop_pct"]),
          "--interpolation", settings["interpolation"]])
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    images = photos()
    ours = processor(images, return_tensors="pt")["pixel_values"]
    timm_eval = timm.data.create_transform(input_size=(3, 224, 224), is_training=False, mean=MEAN, std=STD,
                                           **settings)
    assert torch.equal(ours, torch.stack([timm_eval(image) for image in images]))
    if settings["crop_pct"] == 0.875:
        torchvision_eval = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                               transforms.Normalize(MEAN, STD)])
        assert torch.equal(ours, torch.stack([torchvision_eval(image) for image in images]))
    unit = torch.stack(ImageResizer(processor)(images))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close((unit - mean) / std, ours, atol=1e-6, rtol=0)


def test_a_named_architecture_must_match_the_tensors(tmp_path):
    """resnet18 at full size converts, its sizes agreeing with torchvision's; named resnet34, it is refused."""
    torch.manual_seed(0)
    source = save_layout(torchvision.models.resnet18(num_classes=10).eval(), tmp_path / "src", "robustbench")
    with pytest.raises(SystemExit):
        main([source, str(tmp_path / "wrong"), "--architecture", "resnet34"])
    assert not (tmp_path / "wrong").exists()
    record = convert_checkpoint(source, str(tmp_path / "out"), architecture="resnet18", class_names=DIGITS)
    assert record.sizes["depths"] == [2, 2, 2, 2] and record.model_class == "ResNetForImageClassification"


def test_the_timm_format_takes_any_timm_model(tmp_path):
    """A timm model transformers has no class for (here a tiny XCiT-like ConvNeXt) as a TimmWrapper folder."""
    torch.manual_seed(0)
    source = timm.create_model("convnext_atto", num_classes=10).eval()
    path = save_layout(source, tmp_path / "src", "robustbench")
    main([path, str(tmp_path / "out"), "--architecture", "convnext_atto", "--output_format", "timm",
          "--class_names", DIGITS])
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == "TimmWrapperForImageClassification" and model.config.id2label[3] == "3"
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, source(pixels))
    assert AutoImageProcessor.from_pretrained(tmp_path / "out").data_config["mean"] == MEAN


@pytest.mark.parametrize("architecture,named", [
    ("xcit_tiny_12_p16_224", "Xcit"), ("swin_tiny_patch4_window7_224", "SwinTransformer"),
    ("convnext_tiny", "convnext_tiny"), ("wide_resnet50_2", "Wide ResNet"), ("resnext50_32x4d", "ResNeXt"),
    ("deit_tiny_distilled_patch16_224", "distilled DeiT"), ("resnet50d", "deep-stem")])
def test_other_architectures_are_refused_before_the_file_is_read(tmp_path, architecture, named, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "absent.pth"), str(tmp_path / "out"), "--architecture", architecture])
    message = capsys.readouterr().err
    assert named in message and "--output_format timm" in message and "absent.pth" not in message
    assert not (tmp_path / "out").exists()


def test_what_cannot_be_read_names_the_fix(tmp_path, capsys):
    path = save_layout(tiny_timm_vit(), tmp_path / "src", "ema")
    cases = [([path, str(tmp_path / "a"), "--architecture", "vit", "--use_ema", "--mean", "0", "0", "0", "--std",
               "1", "1", "1"], "--allow_pickle"),
             ([save_layout(tiny_timm_vit(), tmp_path / "raw", "raw"), str(tmp_path / "b"), "--architecture", "vit",
               "--num_heads", "2"], "--mean 0.485"),
             ([save_layout(tiny_timm_vit(), tmp_path / "dad", "dad"), str(tmp_path / "c"), "--architecture", "resnet"],
              "a VIT's, not a RESNET's"),
             ([save_layout(tiny_timm_vit(), tmp_path / "dad2", "dad"), str(tmp_path / "d"), "--architecture", "vit"],
              "--num_heads"),
             ([save_layout(tiny_timm_vit(), tmp_path / "dad3", "dad"), str(tmp_path / "e"), "--architecture", "vit",
               "--num_heads", "2", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"], "contradict")]
    for argv, fix in cases:
        with pytest.raises(SystemExit):
            main(argv)
        assert fix in capsys.readouterr().err, fix
        assert not any(p.name.startswith((".a", ".b", ".c", ".d", ".e")) for p in tmp_path.iterdir())


def test_registers_and_layerscale_are_named(tmp_path, capsys):
    for kwargs, named in ((dict(reg_tokens=2), "register tokens"), (dict(init_values=1e-5), "LayerScale")):
        path = save_layout(tiny_timm_vit(**kwargs), tmp_path / named, "dad")
        with pytest.raises(SystemExit):
            main([path, str(tmp_path / "out"), "--architecture", "vit", "--num_heads", "2"])
        assert named in capsys.readouterr().err


def test_the_record_names_the_source(tmp_path):
    path = save_layout(tiny_timm_vit(), tmp_path / "src", "dad")
    converted(path, tmp_path / "out", "vit", "dad", "--num_heads", "2", "--crop_pct", "0.9", "--interpolation", "bicubic")
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    import hashlib

    assert record["source_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert record["source_file"] == "checkpoint.pth" and record["container"] == "model"
    assert "NormalizeByChannelMeanStd" in record["layout"]
    assert record["evaluation_transform"] == {"image_size": 32, "crop_pct": 0.9, "interpolation": "bicubic",
                                              "mean": list(MEAN), "std": list(STD)}
    assert np.isfinite(record["sizes"]["hidden_size"])
