"""The expert schema: expert counts per dataset schema and policy (the paper's 35 / 26), and the oracle rule's
active sets on hand-made attribute vectors."""
import pytest
import torch

from plugins.data.datasets.attribute_base import UNKNOWN, load_attribute_mat
from plugins.data.datasets.duke_attribute import DUKE_ATTRIBUTES
from plugins.data.datasets.market_attribute import MARKET_ATTRIBUTES
from plugins.mosaic.schema import ExpertPolicy, build_schema

MARKET = build_schema(MARKET_ATTRIBUTES)
FIELD = {s.name: i for i, s in enumerate(MARKET_ATTRIBUTES)}


def _vector(**values):
    """A Market attribute vector: every field 0 (no / first state) unless given."""
    v = torch.zeros(1, len(MARKET_ATTRIBUTES), dtype=torch.long)
    for name, value in values.items():
        v[0, FIELD[name]] = value
    return v


def _on(schema, vector):
    active = schema.active(vector)[0]
    return [name for name, a in zip(schema.expert_names, active) if a]


def test_paper_counts_with_the_default_policy():
    duke = build_schema(DUKE_ATTRIBUTES)
    assert (MARKET.num_experts, len(MARKET.attributes)) == (35, 12)
    assert (duke.num_experts, len(duke.attributes)) == (26, 10)
    assert MARKET.counts() == {"gender": 2, "hair": 2, "up": 2, "down": 2, "clothes": 2, "hat": 1, "backpack": 1,
                               "bag": 1, "handbag": 1, "age": 4, "upper_colour": 8, "lower_colour": 9}
    assert duke.counts() == {"gender": 2, "top": 2, "boots": 1, "hat": 1, "backpack": 1, "bag": 1, "handbag": 1,
                             "shoes": 2, "upper_colour": 8, "lower_colour": 7}


def test_no_colour_expert_policy_adds_one_per_colour_group():
    policy = ExpertPolicy(no_value="expert")
    assert build_schema(MARKET_ATTRIBUTES, policy).num_experts == 37
    assert build_schema(DUKE_ATTRIBUTES, policy).num_experts == 28


def test_bad_policy_names_the_key():
    with pytest.raises(ValueError, match="MOSAIC.POLICY.MULTI_HOT"):
        ExpertPolicy(multi_hot="some")


def test_oracle_active_sets_by_kind():
    on = _on(MARKET, _vector(gender=1, hair=0, hat=0, backpack=1, age=2, upblue=1, downblack=1))
    # single-state: absent hat -> no expert, present backpack -> its one expert
    assert "hat=yes" not in on and "backpack=yes" in on
    # dual-state: exactly the observed state; multiclass age: exactly the observed value
    assert [n for n in on if n.startswith("gender")] == ["gender=female"]
    assert [n for n in on if n.startswith("age")] == ["age=adult"]
    assert [n for n in on if n.startswith("upper_colour")] == ["upper_colour=blue"]
    assert [n for n in on if n.startswith("lower_colour")] == ["lower_colour=black"]
    assert len(on) == 5 + 1 + 1 + 2  # gender, hair, up, down, clothes + backpack + age + two colours


def test_multi_hot_and_missing_colour_policies():
    both = _vector(upblack=1, upred=1)
    assert [n for n in _on(MARKET, both) if n.startswith("upper")] == ["upper_colour=black", "upper_colour=red"]
    first = build_schema(MARKET_ATTRIBUTES, ExpertPolicy(multi_hot="first"))
    assert [n for n in _on(first, both) if n.startswith("upper")] == ["upper_colour=black"]
    none = build_schema(MARKET_ATTRIBUTES, ExpertPolicy(multi_hot="none"))
    assert [n for n in _on(none, both) if n.startswith("upper")] == []
    no_colour = _vector()
    assert [n for n in _on(MARKET, no_colour) if "colour" in n] == []
    extra = build_schema(MARKET_ATTRIBUTES, ExpertPolicy(no_value="expert"))
    assert [n for n in _on(extra, no_colour) if "colour" in n] == ["upper_colour=no_value", "lower_colour=no_value"]
    assert extra["upper_colour"].exclusive is False
    assert build_schema(MARKET_ATTRIBUTES, ExpertPolicy(multi_hot="first", no_value="expert"))["upper_colour"].exclusive


def test_missing_values_skip_the_group_or_fail():
    v = _vector(gender=1)
    v[0, FIELD["gender"]] = UNKNOWN
    v[0, FIELD["upred"]] = UNKNOWN
    on = _on(MARKET, v)
    assert not any(n.startswith("gender") or n.startswith("upper_colour") for n in on)
    assert MARKET.known(v)[0].tolist() == [a.name not in ("gender", "upper_colour") for a in MARKET.attributes]
    strict = build_schema(MARKET_ATTRIBUTES, ExpertPolicy(missing="error"))
    with pytest.raises(ValueError, match="'gender' is not annotated for sample 0"):
        strict.active(v)
    distractor = torch.full((1, 27), UNKNOWN)
    assert not MARKET.active(distractor).any()


def test_inclusion_masks_and_errors():
    mask = MARKET.expert_mask(["gender", "age"])
    assert int(mask.sum()) == 6 and bool(mask[MARKET["age"].expert_slice].all())
    assert int(MARKET.expert_mask(None).sum()) == 35 and int(MARKET.expert_mask([]).sum()) == 0
    with pytest.raises(KeyError, match="unknown study attributes \\['colour'\\]"):
        MARKET.expert_mask(["colour"])
    with pytest.raises(ValueError, match=r"must be \(B, 27\)"):
        MARKET.active(torch.zeros(2, 23, dtype=torch.long))


def test_real_market_file_multi_hot_and_uncoloured_ids(shared_data):
    table = load_attribute_mat(str(shared_data / "Market-1501-v15.09.15" / "market_attribute.mat"),
                               "market_attribute", MARKET_ATTRIBUTES)["train"]
    vectors = torch.tensor(list(table.values()))
    active = MARKET.active(vectors)
    upper = active[:, MARKET["upper_colour"].expert_slice].sum(1)
    # the spec: colour groups are not strictly one-hot; 78 training ids have no upper colour (-> group inactive)
    assert int((upper == 0).sum()) == 78
    first = build_schema(MARKET_ATTRIBUTES, ExpertPolicy(multi_hot="first")).active(vectors)
    assert int(first[:, MARKET["upper_colour"].expert_slice].sum(1).max()) == 1
