"""MoSAIC's model: equivalences with CLIP-ReID (zero-init experts, no active expert), the pooling modes on hand-set
experts, what trains, the checkpoint layout, the predicted router, golden parameter counts."""
import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage

from mosaic_batches import tiny_batch
from plugins.modeling.meta_arch.clipreid import CLIPReID
from plugins.config import setup_cfg
from plugins.mosaic.experts import AttributeExpertBank, ExpertFFN
from plugins.mosaic.meta_arch import MoSAIC


def _pair(tiny_cfg, *opts):
    """A MoSAIC model and a CLIPReID model with the same CLIP-ReID weights."""
    torch.manual_seed(0)
    mosaic = build_model(tiny_cfg(*opts)).eval()
    base = build_model(tiny_cfg("MODEL.META_ARCHITECTURE", "CLIPReID")).eval()
    missing, unexpected = base.load_state_dict(mosaic.state_dict(), strict=False)
    assert not missing and all(".experts." in k or k.startswith("predictor.") for k in unexpected)
    return mosaic, base


def _randomise_experts(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for bank in model.banks:
        bank.lora_B.data = torch.randn(bank.lora_B.shape, generator=g) * 0.5


@torch.no_grad()
def test_zero_init_experts_equal_clipreid(tiny_cfg):
    mosaic, base = _pair(tiny_cfg)
    batch = tiny_batch()
    assert torch.equal(mosaic(batch), base(batch))


@torch.no_grad()
def test_no_active_expert_equals_clipreid_and_active_ones_change_it(tiny_cfg):
    mosaic, base = _pair(tiny_cfg)
    _randomise_experts(mosaic)
    batch = tiny_batch()
    assert not torch.allclose(mosaic(batch), base(batch), atol=1e-3)
    mosaic.set_included([])  # every study attribute switched off
    assert torch.equal(mosaic(batch), base(batch))
    mosaic.set_included(None)
    unannotated = dict(batch, attributes=torch.full_like(batch["attributes"], -1))  # e.g. gallery distractors
    assert torch.equal(mosaic(unannotated), base(unannotated))
    # only the hat (a single-state attribute) switched on: samples without a hat are CLIP-ReID's exactly
    mosaic.set_included(["hat"])
    hat = batch["attributes"][:, 5] == 1
    out, ref = mosaic(batch), base(batch)
    assert 0 < int(hat.sum()) < len(hat)
    assert torch.equal(out[~hat], ref[~hat]) and not torch.allclose(out[hat], ref[hat], atol=1e-3)


def _bank(token_pool="mean", expert_pool="mean"):
    bank = AttributeExpertBank(num_experts=3, width=4, rank=2, alpha=4.0, token_pool=token_pool,
                               expert_pool=expert_pool)
    g = torch.Generator().manual_seed(0)
    bank.lora_A.data = torch.randn(3, 2, 4, generator=g)
    bank.lora_B.data = torch.randn(3, 4, 2, generator=g)
    return bank


def test_expert_tokens_equal_the_per_token_map_pooled():
    tokens = torch.randn(2, 5, 4)
    bank = _bank()
    by_token = torch.einsum("erd,bnd->bner", bank.lora_A, tokens)
    by_token = torch.einsum("edr,bner->bned", bank.lora_B, by_token) * 2.0  # scaling = 4 / 2
    assert torch.allclose(bank.expert_tokens(tokens), by_token.mean(1), atol=1e-6)
    cls = _bank(token_pool="cls")
    assert torch.allclose(cls.expert_tokens(tokens), by_token[:, 0], atol=1e-6)


def test_pooling_over_active_experts():
    tokens = torch.randn(3, 5, 4)
    active = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    mean, mx = _bank(expert_pool="mean"), _bank(expert_pool="max")
    per_expert = mean.expert_tokens(tokens)
    assert torch.allclose(mean(tokens, active)[0], (per_expert[0, 0] + per_expert[0, 2]) / 2, atol=1e-6)
    assert torch.allclose(mx(tokens, active)[0], torch.maximum(per_expert[0, 0], per_expert[0, 2]), atol=1e-6)
    for bank in (mean, mx):
        out = bank(tokens, active)
        assert torch.equal(out[1], torch.zeros(4))  # no active expert adds nothing
        assert torch.allclose(out[2], per_expert[2, 1], atol=1e-6)  # one expert: its own token


@pytest.mark.parametrize("add_to", ["all", "cls"])
def test_summary_token_goes_after_the_ffn(add_to):
    mlp = torch.nn.Sequential()
    mlp.add_module("c_fc", torch.nn.Linear(4, 8))
    mlp.add_module("gelu", torch.nn.GELU())
    mlp.add_module("c_proj", torch.nn.Linear(8, 4))
    bank = _bank()
    ffn = ExpertFFN(mlp, bank, add_to=add_to)
    z = torch.randn(2, 5, 4)
    active = torch.tensor([[True, True, False], [False, False, True]])
    bank.active = active
    out = ffn(z)
    expected = mlp(z)
    summary = bank(z, active)
    if add_to == "all":
        expected = expected + summary.unsqueeze(1)
    else:
        expected[:, 0] += summary
    assert torch.allclose(out, expected, atol=1e-6)
    assert set(dict(ffn.named_parameters())) == {"c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias",
                                                 "experts.lora_A", "experts.lora_B"}
    bank.active = None
    with pytest.raises(RuntimeError, match="outside MoSAIC routing"):
        ffn(z)


def test_only_experts_and_attribute_head_train(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".experts." in n or n.startswith("predictor.head") for n in trainable)
    assert len([n for n in trainable if ".experts." in n]) == 2 * 2  # lora_A, lora_B in each of the last 2 blocks
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # step 1 moves B off zero, after which A receives gradient too
        with EventStorage():
            losses = model(tiny_batch())
        assert set(losses) == {"loss_id", "loss_triplet", "loss_attr"}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    heads = build_model(tiny_cfg("MOSAIC.TRAIN_HEADS", "True"))
    names = {n for n, p in heads.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier_proj.weight", "bottleneck.weight"} <= names
    assert "bottleneck.bias" not in names


def test_router_and_batch_errors(tiny_cfg):
    with pytest.raises(ValueError, match="MOSAIC.ROUTER"):
        build_model(tiny_cfg("MOSAIC.ROUTER", "learned"))
    with pytest.raises(ValueError, match="ATTRIBUTE_HEAD"):
        build_model(tiny_cfg("MOSAIC.ROUTER", "predicted", "MOSAIC.ATTRIBUTE_HEAD", "False"))
    with pytest.raises(ValueError, match="has no attribute_specs"):
        build_model(tiny_cfg("DATASETS.NAMES", "('Market1501',)"))
    model = build_model(tiny_cfg()).eval()
    batch = tiny_batch()
    del batch["attributes"]
    with pytest.raises(KeyError, match="PLUGINS.DATA.ATTRIBUTES"):
        model(batch)


@torch.no_grad()
def test_predicted_router_decodes_and_routes(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    _randomise_experts(model)
    schema, head = model.schema, model.predictor.head
    batch = tiny_batch(4)
    truth = schema.active(batch["attributes"])
    # a head that outputs +/-20 logits of the true experts of sample 0 for every sample
    head.weight.zero_()
    head.bias.copy_(truth[0].float() * 40 - 20)
    predicted = model.predicted_active(batch)
    assert torch.equal(predicted, truth[0].expand_as(predicted))
    model.router_mode = "predicted"
    routed = model(batch)
    model.router_mode = "oracle"
    same_attrs = dict(batch, attributes=batch["attributes"][:1].expand_as(batch["attributes"]))
    assert torch.allclose(routed, model(same_attrs), atol=1e-5)
    # every attribute but the single-state ones decodes to its arg-max expert even when every logit is negative;
    # a multi-hot colour group also to every other colour above 0.5
    decoded = model.predictor.decode(torch.full((2, schema.num_experts), -5.0))
    for a in schema.attributes:
        assert int(decoded[0, a.expert_slice].sum()) == (0 if a.kind == "single_state" else 1)
    logits = torch.full((1, schema.num_experts), -5.0)
    colours = schema["upper_colour"].expert_slice
    logits[0, colours.start], logits[0, colours.start + 2] = 3.0, 1.0
    assert int(model.predictor.decode(logits)[0, colours].sum()) == 2


def test_attribute_loss_ignores_unannotated_attributes(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    feats = torch.randn(4, model.image_encoder.width)
    attrs = tiny_batch(4)["attributes"]
    loss = model.predictor(feats, attributes=attrs).aux_loss
    unknown = attrs.clone()
    unknown[:, 0] = -1  # gender unknown everywhere: its two logits drop out of the loss
    loss_unknown = model.predictor(feats, attributes=unknown).aux_loss
    assert torch.isfinite(loss) and not torch.isclose(loss, loss_unknown)
    assert model.predictor(feats, attributes=torch.full_like(attrs, -1)).aux_loss == 0


def test_golden_parameter_counts_vit_b16():
    """Market: 35 experts x 12 blocks x 2 x 16 x 768, + the attribute head 768 x 35 + 35."""
    cfg = setup_cfg("configs/mosaic/market.yml", ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False",
                                                   "MODEL.HEADS.NUM_CLASSES", "751"])
    model = build_model(cfg)
    assert isinstance(model, MoSAIC) and isinstance(model, CLIPReID)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert experts == 35 * 12 * 2 * 16 * 768 == 10_321_920
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 10_321_920 + 768 * 35 + 35


@torch.no_grad()
def test_attribute_accuracy_counts_exact_expert_sets(tiny_cfg):
    from plugins.mosaic.evaluation import attribute_accuracy

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    batch = tiny_batch(6)
    batch["attributes"][5] = -1  # a distractor: annotated nowhere
    truth = model.schema.active(batch["attributes"])
    model.predictor.head.weight.zero_()
    model.predictor.head.bias.copy_(truth[0].float() * 40 - 20)  # always predicts sample 0's experts
    accuracy = attribute_accuracy(model, [batch])
    for a in model.schema.attributes:
        same = [bool((truth[i, a.expert_slice] == truth[0, a.expert_slice]).all()) for i in range(5)]
        assert accuracy[a.name]["annotated"] == 5
        assert accuracy[a.name]["accuracy"] == pytest.approx(100 * sum(same) / 5)
    assert accuracy["gender"]["majority"] == pytest.approx(100 * max(
        int((batch["attributes"][:5, 0] == v).sum()) for v in (0, 1)) / 5)
