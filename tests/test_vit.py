"""The ViT family: timm's key layout, standard weights, bad input, and MVP over heads and nodes."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch

from conftest import tiny_ifp
from helpers import SHARED, synthetic_dataset
from metavote.cli import main
from metavote.data import load_dataset, sample_tasks, write_npz_dataset
from metavote.errors import CheckpointError, ConfigError
from metavote.methods import create_method
from metavote.models import cifar_vit, create_model, load_backbone, load_state_checked, save_weights, vision_transformer, vit_small_patch16_224
from metavote.pruning import SubNetwork, extract, target_widths
from metavote.zoo import Zoo, build_zoo

SHARED_VIT = SHARED / "pretrained" / "cifar100_vit_d192_l6_h6.safetensors"


def timm_keys(depth: int) -> set[str]:
    """The parameter names of timm's ``VisionTransformer`` with class-token pooling."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i in range(depth):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"}
    return keys


def test_vit_small_has_timms_keys_and_shapes():
    model = vit_small_patch16_224()
    state = model.state_dict()
    assert set(state) == timm_keys(12)
    assert state["blocks.0.attn.qkv.weight"].shape == (1152, 384) and state["blocks.11.mlp.fc1.weight"].shape == (1536, 384)
    assert state["pos_embed"].shape == (1, 197, 384) and state["patch_embed.proj.weight"].shape == (384, 3, 16, 16)
    assert sum(p.numel() for p in model.parameters()) == 22_050_664  # timm's vit_small_patch16_224
    assert model.input_size == (3, 224, 224) and model.num_features == 384 and model.get_classifier() is model.head


def test_a_deit_small_state_dict_loads_from_a_local_file(tmp_path):
    """A randomly initialised state_dict of DeiT-S's exact shapes, saved as a plain .pth (no metadata)."""
    torch.manual_seed(0)
    source = vit_small_patch16_224().eval()
    torch.save({"model": source.state_dict()}, tmp_path / "deit_small_patch16_224.pth")  # DeiT's checkpoints nest under "model"
    model, meta = load_backbone(tmp_path / "deit_small_patch16_224.pth")
    assert meta["config"] | {"mean": None, "std": None} == {"arch": "vit", "img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12,
                                                            "num_heads": 6, "mlp_ratio": 4.0, "mean": None, "std": None}
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))
    assert len(model.unit_groups()) == 24 and model.unit_groups()[0].size == 6


def test_the_forward_pass_is_timms(tmp_path):
    """Pre-norm blocks with softmax(q k^T / sqrt(head_dim)) v, written out by hand."""
    torch.manual_seed(1)
    m = vision_transformer(img_size=16, patch_size=8, embed_dim=12, depth=1, num_heads=3, mlp_ratio=2.0, num_classes=4).eval()
    x = torch.rand(2, 3, 16, 16)
    t = m.patch_embed.proj((x - m.mean) / m.std).flatten(2).transpose(1, 2)
    t = torch.cat([m.cls_token.expand(2, -1, -1), t], 1) + m.pos_embed
    b = m.blocks[0]
    qkv = b.attn.qkv(b.norm1(t)).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    att = (qkv[0] @ qkv[1].transpose(-1, -2) / 2.0).softmax(-1) @ qkv[2]
    t = t + b.attn.proj(att.transpose(1, 2).reshape(2, 5, 12))
    t = t + b.mlp.fc2(torch.nn.functional.gelu(b.mlp.fc1(b.norm2(t))))
    with torch.no_grad():
        assert torch.allclose(m(x), m.head(m.norm(t)[:, 0]), atol=1e-5)
        assert m.norm.eps == 1e-6 and b.norm1.eps == 1e-6


def test_bad_vit_input_is_one_clear_error(tmp_path, capsys):
    folder = write_npz_dataset(synthetic_dataset(num_classes=4, train_per_class=2, test_per_class=2), tmp_path / "data")
    with pytest.raises(ConfigError, match="num_heads 5 does not divide the embedding width 192"):
        cifar_vit(num_heads=5)
    with pytest.raises(CheckpointError, match="shape mismatches"):  # a ViT state_dict of another size
        load_state_checked(vit_small_patch16_224(), cifar_vit().state_dict(), "small.pth")
    # a file whose metadata names a head count that does not divide its width: exit 2, one line
    save_weights(tmp_path / "vit.safetensors", cifar_vit(), {"arch": "vit", "num_heads": 5})
    assert main(["evaluate", "--weights", str(tmp_path / "vit.safetensors"), "--dataset", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_heads 5 does not divide" in err
    # metadata that says one depth while the tensors hold another
    save_weights(tmp_path / "deep.safetensors", cifar_vit(), {"arch": "vit", "depth": 8})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_backbone(tmp_path / "deep.safetensors")


def test_out_of_range_kept_units_are_refused(tmp_path, capsys):
    groups = cifar_vit().unit_groups()
    with pytest.raises(ConfigError, match="blocks.0.attn: kept indices outside 0..5"):
        SubNetwork({"blocks.0.attn": np.array([0, 6])}, {"blocks.0.attn": 6})
    unsized = SubNetwork({g.name: np.arange(2) for g in groups} | {"blocks.3.mlp": np.array([1, 384])})
    with pytest.raises(ConfigError, match="blocks.3.mlp: kept indices outside 0..383"):
        unsized.check(groups)
    with pytest.raises(ConfigError, match="would prune group"):
        target_widths(create_model("cifar_resnet18", 5, width=0.125).unit_groups(), 0.99)
    assert target_widths(groups, 0.9)["blocks.0.attn"] == 1
    with pytest.raises(ConfigError, match="ratio 0.95 would leave the model without any head"):
        target_widths(groups, 0.95)  # a block may lose every head (its residual path remains), the model may not


def test_a_zoo_record_with_out_of_range_units_is_one_clear_error(tmp_path, capsys):
    from metavote.data import Task
    from metavote.methods import PruneResult
    from metavote.training import Costs

    vit = cifar_vit(num_classes=3)
    meta = {"fingerprint": "f" * 64, "arch": "vit", "config": vit.config, "dataset": "synthetic"}
    subnet = SubNetwork({g.name: np.arange(2) for g in vit.unit_groups()} | {"blocks.2.attn": np.array([1, 7])})  # 6 heads: 7 is out
    with Zoo(tmp_path / "zoo", meta) as zoo:
        record = zoo.add(Task("synthetic", ("a", "b", "c")), PruneResult(vit, subnet, Costs(), 0.5, "random", {}))
    assert main(["zoo", "show", "--zoo", str(tmp_path / "zoo"), record.record_id]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "blocks.2.attn: kept indices outside 0..5" in err and record.record_id in err


def test_a_vit_zoo_and_mvp_over_heads_and_nodes(tmp_path, vit_setup, capsys):
    """A zoo of random ViT sub-networks, built by the zoo builder, and MVP voting over its heads and nodes."""
    dataset, folder, weights = vit_setup
    tasks = sample_tasks(dataset, 3, 4, seed=5)
    method = create_method("random", ratio=0.5, iterations=2, batch_size=8)
    report = build_zoo(tmp_path / "zoo", tasks[:3], weights, method, str(folder), workers=1, progress=False)
    assert len(report.done) == 3 and not report.failed
    backbone, meta = load_backbone(weights, dataset=dataset)
    with Zoo(tmp_path / "zoo") as zoo:
        assert zoo.describe() == "vit d48 x2" and zoo.model_config["num_heads"] == 4
        records = zoo.records(method="random")
        small, subnet = zoo.load(records[0])
        assert small.blocks[0].attn.num_heads == len(subnet.kept["blocks.0.attn"]) == 2
        mvp = create_method("mvp", ratio=0.5, iterations=3, batch_size=8, neighbours=2, zoo_method="random")
        data = dataset.load_task(tasks[3])
        result = mvp.run(backbone, data, zoo, None)
        # init="backbone": the voted units with the pre-trained weights, no averaging (an ablation)
        plain = create_method("mvp", ratio=0.5, iterations=0, batch_size=8, neighbours=2, zoo_method="random", init="backbone",
                              bn_batches=0).run(backbone, data, zoo, [0, 1, 2])
    expected = extract(backbone, plain.subnet).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in plain.model.state_dict().items() if not k.startswith("head."))
    assert result.subnet.widths() == target_widths(backbone.unit_groups(), 0.5)
    assert [b.attn.num_heads for b in result.model.blocks] == [len(result.subnet.kept[f"blocks.{i}.attn"]) for i in range(2)]
    assert [b.mlp.fc1.out_features for b in result.model.blocks] == [len(result.subnet.kept[f"blocks.{i}.mlp"]) for i in range(2)]
    assert len(result.params["neighbours"]) == 2 and result.params["head"] in ("neighbours", "imprint")
    assert result.model.blocks[1].mlp.fc1.out_features == 48 and result.model.get_classifier().out_features == 3
    assert result.costs.iterations == 3 and 0 <= result.accuracy <= 1
    # IFP's activation importance has no probe for heads: a ViT zoo by IFP is refused before any work
    with pytest.raises(ConfigError, match="ifp needs a model with a norm or layer to measure importance at"):
        build_zoo(tmp_path / "zoo2", tasks, weights, tiny_ifp(), str(folder), workers=1, progress=False)
    assert main(["zoo", "ls", "--zoo", str(tmp_path / "zoo")]) == 0
    assert "backbone vit d48 x2" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vit_methods_run_on_cuda(tmp_path, vit_setup):
    """Random pruning and MVP over heads and nodes on CUDA (bf16 autocast in training)."""
    dataset, folder, weights = vit_setup
    tasks = sample_tasks(dataset, 3, 3, seed=5)
    build_zoo(tmp_path / "zoo", tasks[:2], weights, create_method("random", ratio=0.5, iterations=2, batch_size=8), str(folder),
              workers=1, progress=False, device="cuda")
    backbone = load_backbone(weights, dataset=dataset)[0].cuda()
    with Zoo(tmp_path / "zoo", device="cuda") as zoo:
        result = create_method("mvp", ratio=0.5, iterations=3, batch_size=8, neighbours=2, zoo_method="random").run(
            backbone, dataset.load_task(tasks[2]), zoo, None)
    assert next(result.model.parameters()).is_cuda and result.costs.iterations == 3 and 0 <= result.accuracy <= 1


def test_vit_flops_follow_the_input_size():
    """FLOPs are counted on the model's own input: a ViT at 224 costs about (197/65)^2 of one at 32 in attention."""
    from metavote.training import Costs

    small = vision_transformer(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=4, mlp_ratio=2.0, num_classes=5)
    large = vision_transformer(img_size=64, patch_size=4, embed_dim=48, depth=1, num_heads=4, mlp_ratio=2.0, num_classes=5)
    a, b = Costs(), Costs()
    a.add_steps(small, 1, 2)
    b.add_steps(large, 1, 2)
    assert b.flops > 3.5 * a.flops  # 257 tokens against 65: linear layers 4x, attention 16x


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_VIT.exists() or not (SHARED / "data" / "cifar100").exists(), reason="needs ../shared's ViT and CIFAR-100")
def test_shared_vit_scores_its_metadata_accuracy(capsys):
    """The small CIFAR ViT loads exactly into timm's layout: on the first 20 test images of every
    class it scores its metadata's CIFAR-100 top-1 (50.04%) within 3 standard errors, and
    `metavote evaluate --classes` scores a task with the head's rows."""
    from metavote.training import evaluate

    dataset = load_dataset("cifar100", SHARED / "data")
    model, meta = load_backbone(SHARED_VIT, dataset=dataset)
    assert meta["config"]["num_heads"] == 6 and meta["classes"] == dataset.classes and model.input_size == (3, 32, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pick = np.concatenate([np.flatnonzero(dataset.test_labels == c)[:20] for c in range(100)])
        acc = evaluate(model, dataset.test_images[pick], dataset.test_labels[pick])
        assert main(["evaluate", "--weights", str(SHARED_VIT), "--data", str(SHARED / "data"), "--threads", "2",
                     "--classes", "apple,bus,forest,lion,rose"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert abs(acc - float(meta["test_acc"])) <= 0.033, (acc, meta["test_acc"])
    out = capsys.readouterr().out
    assert "on 500 test images of task" in out and "(cifar100: apple, bus, forest, lion, rose)" in out, out


def test_ahnp_reaches_the_ratio_and_shrinks_the_model(vit_setup):
    """AHNP removes heads and nodes physically until the global targets, folds its scores, fine-tunes."""
    dataset, _, weights = vit_setup
    backbone, meta = load_backbone(weights, dataset=dataset)
    data = dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0])
    ahnp = create_method("ahnp", ratio=0.75, iterations=30, batch_size=8, l1=1e-2)
    result = ahnp.run(backbone, data, None, None)
    groups = result.model.unit_groups()
    assert sum(g.size for g in groups if g.kind == "head") == 2  # round(0.25 * 8 heads)
    assert sum(g.size for g in groups if g.kind == "node") == 48  # round(0.25 * 192 nodes)
    assert result.subnet.widths() == {g.name: g.size for g in groups}  # Omega numbers what the model keeps
    assert sum(p.numel() for p in result.model.parameters()) < 0.6 * sum(p.numel() for p in backbone.parameters())
    assert not any(m._forward_pre_hooks for m in result.model.modules())  # the score gates are folded away
    assert result.costs.iterations == 30 and result.params["reached_at"] <= 18 and result.params["fine_tune_iterations"] == 12
    with torch.no_grad():  # the compact model runs, and the extracted sub-network of the backbone has its shapes
        assert result.model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    skeleton = extract(backbone, result.subnet)
    assert {k: v.shape for k, v in skeleton.state_dict().items() if not k.startswith("head.")} == \
           {k: v.shape for k, v in result.model.state_dict().items() if not k.startswith("head.")}


def test_every_vit_row_has_the_same_size(vit_setup, tmp_path):
    """Issue 37: AHNP's global targets are the per-block widths summed, so its record has random pruning's size; a record
    holding a head more (an older AHNP zoo's) is cut to that size by its own weight norms, from whichever block."""
    from metavote.methods.mvp import trim_to_widths
    from metavote.pruning import shrink

    def params(model):  # the body's: the backbone's own head has 6 rows, a task's 3
        return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("head."))

    dataset, _, weights = vit_setup
    backbone, meta = load_backbone(weights, dataset=dataset)
    data = dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0])
    ahnp = create_method("ahnp", ratio=0.75, iterations=12, batch_size=8, l1=1e-2).run(backbone, data, None, None)
    uniform = create_method("random", ratio=0.75, iterations=1, batch_size=8).run(backbone, data, None, None)
    assert params(ahnp.model) == params(uniform.model)

    groups = backbone.unit_groups()
    widths = target_widths(groups, 0.75)  # one head of 4 per block, 24 of 48 nodes
    heads = [g.name for g in groups if g.kind == "head"]
    kept = {g.name: np.arange(widths[g.name]) for g in groups} | {heads[0]: np.array([0, 2]), heads[1]: np.array([3])}
    wide = shrink(backbone, kept, groups)
    with torch.no_grad():  # head 2 of block 0 is the weakest of the three by far
        qkv = wide.get_submodule(next(s.module for s in groups[0].slots if s.module.endswith("qkv"))).weight
        qkv.view(3, 2, -1, qkv.shape[-1])[:, 1] *= 1e-3
    trimmed, subnet, removed = trim_to_widths(wide, SubNetwork(kept, {g.name: g.size for g in groups}), widths)
    assert removed == 1 and params(trimmed) == params(uniform.model)
    assert subnet.kept[heads[0]].tolist() == [0] and subnet.kept[heads[1]].tolist() == [3]
    assert trim_to_widths(trimmed, subnet, widths)[2] == 0  # at the widths already: left as it is

    # a record with the ratio's heads in all, both in block 0 (AHNP puts them where its scores do), serves as the nearest
    from metavote.data import Task
    from metavote.methods import PruneResult
    from metavote.models import replace_head
    from metavote.training import Costs

    nodes = [g.name for g in groups if g.kind == "node"]
    uneven = {heads[0]: np.array([1, 3]), heads[1]: np.array([], dtype=np.int64),  # and 48 nodes: 40 in block 0, 8 in block 1
              nodes[0]: np.arange(40), nodes[1]: np.arange(8)}
    record_model = shrink(replace_head(copy.deepcopy(backbone), 3), uneven, groups)
    with Zoo(tmp_path / "zoo", meta) as zoo:
        record = zoo.add(Task(dataset.name, dataset.classes[:3]), PruneResult(record_model, SubNetwork(uneven, {g.name: g.size for g in groups}),
                                                                               Costs(), 0.5, "ahnp", {"ratio": 0.75}))
        near = create_method("nearest", neighbours=[record], ratio=0.75, iterations=1, batch_size=8).run(backbone, data, zoo, None)
    assert near.subnet.kept[heads[1]].tolist() == [] and len(near.subnet.kept[nodes[1]]) == 8 and params(near.model) == params(uniform.model)


def test_mvp_lays_heads_and_nodes_over_the_blocks_as_its_neighbours_do(vit_setup, tmp_path):
    """Issue 37: AHNP's records keep many heads in some blocks and none in others; with ``layout="neighbours"`` MVP's
    vote keeps the ratio's heads and nodes in all, spread over the blocks as its neighbours spread theirs, so the model
    has the size of every other row; channels (a CNN's) keep the ratio's widths."""
    from metavote.data import Task
    from metavote.experiments import default_method
    from metavote.methods import PruneResult
    from metavote.methods.mvp import neighbour_widths
    from metavote.models import replace_head
    from metavote.pruning import shrink
    from metavote.training import Costs

    dataset, _, weights = vit_setup
    backbone, meta = load_backbone(weights, dataset=dataset)
    groups = backbone.unit_groups()
    sizes = {g.name: g.size for g in groups}
    widths = target_widths(groups, 0.75)  # one head of 4 per block, 24 of 96 nodes
    heads, nodes = [g.name for g in groups if g.kind == "head"], [g.name for g in groups if g.kind == "node"]
    a = SubNetwork({heads[0]: [0, 1], heads[1]: [], nodes[0]: np.arange(40), nodes[1]: np.arange(8)}, sizes)
    b = SubNetwork({heads[0]: [1, 2], heads[1]: [], nodes[0]: np.arange(36), nodes[1]: np.arange(12)}, sizes)
    spread = neighbour_widths(groups, [a, b], widths)
    assert [spread[h] for h in heads] == [2, 0] and [spread[n] for n in nodes] == [38, 10]
    assert sum(spread.values()) == sum(widths.values())
    lopsided = SubNetwork({heads[0]: [0, 1, 2, 3], heads[1]: [], nodes[0]: np.arange(96), nodes[1]: np.arange(0)}, sizes)
    capped = neighbour_widths(groups, [lopsided], widths | {nodes[0]: 60, nodes[1]: 60})  # 120 nodes: block 0 holds only 96
    assert [capped[n] for n in nodes] == [96, 24] and [capped[h] for h in heads] == [2, 0]

    data = dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0])
    with Zoo(tmp_path / "zoo", meta) as zoo:
        records = []
        for i, subnet in enumerate((a, b)):
            model = shrink(replace_head(copy.deepcopy(backbone), 3), subnet.kept, groups)
            records.append(zoo.add(Task(dataset.name, dataset.classes[i:i + 3]), PruneResult(model, subnet, Costs(), 0.5, "ahnp", {"ratio": 0.75})))
        settings = dict(neighbours=records, ratio=0.75, iterations=1, batch_size=8)
        laid = create_method("mvp", **settings).run(backbone, data, zoo, None)  # the default layout
        plain = create_method("mvp", layout="ratio", **settings).run(backbone, data, zoo, None)
        zoo.set_source_method("ahnp")  # a zoo built by AHNP: `auto` votes at the zoo's ratio, the nearest record elsewhere
        assert default_method(zoo, 0.75)[0] == "mvp" and default_method(zoo, 0.5)[0] == "mvp"
    assert laid.subnet.widths() == spread and plain.subnet.widths() == widths
    assert set(laid.subnet.kept[heads[0]]) <= {0, 1, 2}  # the vote within a block: heads its neighbours keep
    assert sum(p.numel() for p in laid.model.parameters()) == sum(p.numel() for p in plain.model.parameters())
    with pytest.raises(ConfigError, match="layout"):
        create_method("mvp", layout="uneven")


def test_ahnp_costs_shrink_as_units_go(vit_setup):
    """FLOPs are counted on the model that ran at each step: less than J dense steps, more than J final ones."""
    from metavote.training import Costs

    dataset, _, weights = vit_setup
    backbone, _ = load_backbone(weights, dataset=dataset)
    data = dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0])
    result = create_method("ahnp", ratio=0.75, iterations=20, batch_size=8, l1=1e-2).run(backbone, data, None, None)
    dense, final = Costs(), Costs()
    dense.add_steps(create_model(backbone.config, 3), 20, 8)
    final.add_steps(result.model, 20, 8)
    assert final.flops < result.costs.flops < dense.flops


def test_ahnp_that_cannot_reach_the_ratio_is_one_clear_error(tmp_path, vit_setup, capsys):
    dataset, folder, weights = vit_setup
    backbone, _ = load_backbone(weights, dataset=dataset)
    data = dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0])
    stuck = create_method("ahnp", ratio=0.75, iterations=10, batch_size=8, l1=0.0, l1_range=1.0, score_lr=1e-6)
    with pytest.raises(ConfigError, match="AHNP's scores did not reach ratio 0.75 within 6 iterations"):
        stuck.run(backbone, data, None, None)
    with pytest.raises(ConfigError, match="ratio 0.95 would leave the model without any head"):  # 8 heads in all
        create_method("ahnp", ratio=0.95, iterations=2, batch_size=8).run(backbone, data, None, None)
    # through the CLI: exit 2, one line, and the zoo holds no record of the failed task
    assert main(["zoo", "build", "--zoo", str(tmp_path / "zoo"), "--dataset", str(folder), "--backbone", str(weights), "--method", "ahnp",
                 "--tasks", "1", "--n-way", "3", "--ratio", "0.75", "--iterations", "2", "--batch-size", "8", "--workers", "1", "--quiet"]) == 2
    assert "1 task(s) failed" in capsys.readouterr().err
    with Zoo(tmp_path / "zoo") as zoo:
        assert zoo.records() == [] and zoo.source_method == "ahnp"


def test_vit_profiles_and_the_vit_table():
    from metavote.bench import main_methods
    from metavote.profiles import get_profile

    cpu = get_profile("vit-cpu")
    assert cpu.upper_bound == "ahnp" and cpu.settings("ahnp") == {"ratio": 0.8, "iterations": 200, "batch_size": 64, "lr": 5e-4}
    assert cpu.settings("mvp") == {"ratio": 0.8, "iterations": 20, "batch_size": 64, "lr": 2e-4, "optimizer": "adamw"}
    labels = [m.label for m in main_methods(cpu, peers=False)]
    assert labels == ["MVP (J=20)", "AHNP (J=200)", "random (J=20)", "UVC (J=20)", "PoWER (J=20)", "random (paper) (J=20)"]  # Table 2
    peers = [m.label for m in main_methods(cpu) if m.key.startswith("tp-")]  # the peer ranks heads and MLP nodes too
    assert peers == [f"Torch-Pruning {kind} (J={j})" for kind in ("magnitude", "Taylor", "iterative") for j in (20, 200)]
    paper = get_profile("vit-paper").settings("ahnp")
    assert paper["iterations"] == 1000 and paper["ratio"] == 0.9


def test_paper_random_has_a_new_head_and_no_reestimation(vit_setup):
    dataset, _, weights = vit_setup
    backbone, _ = load_backbone(weights, dataset=dataset)
    data = dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0])
    ours = create_method("random", ratio=0.5, iterations=0, batch_size=8).run(backbone, data, None, [0, 1, 2])
    paper = create_method("random-paper", ratio=0.5, iterations=0, batch_size=8).run(backbone, data, None, [0, 1, 2])
    assert torch.equal(ours.model.head.weight, backbone.head.weight[[0, 1, 2]])  # ours: the pre-trained rows
    assert not torch.equal(paper.model.head.weight, backbone.head.weight[[0, 1, 2]])  # the paper's: a new random head
    assert paper.params["bn_batches"] == 0 and paper.params["head"] == "new"
    assert all(np.array_equal(ours.subnet.kept[k], paper.subnet.kept[k]) for k in ours.subnet.kept)  # the same random Omega


def test_a_vit_zoo_refuses_a_cnn_backbone(tmp_path, vit_setup, tiny_setup, capsys):
    dataset, folder, weights = vit_setup
    build_zoo(tmp_path / "vit-zoo", sample_tasks(dataset, 3, 1, seed=1), weights, create_method("random", ratio=0.5, iterations=1,
              batch_size=8), str(folder), workers=1, progress=False)
    _, cnn_folder, cnn_weights = tiny_setup
    code = main(["zoo", "build", "--zoo", str(tmp_path / "vit-zoo"), "--dataset", str(cnn_folder), "--backbone", str(cnn_weights), "--tasks", "1",
                 "--n-way", "3", "--ratio", "0.5", "--iterations", "1", "--batch-size", "8", "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "was built from backbone" in err and "(vit d48 x2)" in err


def test_the_vit_iterations_ablation_runs_mvp_against_ahnp(tmp_path, vit_setup):
    """Figure 4a for a ViT: MVP and AHNP (the ViT profile's conventional method) at the same J."""
    from metavote.bench import BenchContext, ablate_iterations
    from metavote.profiles import get_profile

    dataset, folder, weights = vit_setup
    tasks = sample_tasks(dataset, 3, 4, seed=5)
    build_zoo(tmp_path / "zoo", tasks[:3], weights, create_method("random", ratio=0.5, iterations=1, batch_size=8), str(folder),
              workers=1, progress=False)
    backbone, meta = load_backbone(weights, dataset=dataset)
    ctx = BenchContext(backbone, meta["classes"], dataset, Zoo(tmp_path / "zoo"))
    profile = get_profile("vit-cpu", ratio=0.5, batch_size=8)
    rows = ablate_iterations(ctx, tasks[3:], profile, iterations=(4, 8), out=tmp_path / "it", progress=False)
    assert [(r["method"], r["iterations"]) for r in rows] == [("AHNP J=4", 4), ("MVP J=4", 4), ("AHNP J=8", 8), ("MVP J=8", 8)]
    assert {r["family"] for r in rows} == {"AHNP", "MVP"} and all(0 <= r["accuracy"] <= 1 for r in rows)
