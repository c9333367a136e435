"""plain_optimizer_params: with fast-reid's contiguous buffer, torch 2.x training never updates a weight."""
import torch
from fastreid.config import get_cfg
from fastreid.solver import build_optimizer as fastreid_build_optimizer
from fastreid.utils.params import ContiguousParams

from plugins.compat import optimizer as opt_patch


def _cfg():
    cfg = get_cfg()
    cfg.SOLVER.OPT = "SGD"
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    return cfg


def _one_step(optimizer, model):
    before = model.weight.detach().clone()
    optimizer.zero_grad()
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return before, model.weight.detach()


def test_contiguous_buffer_never_steps_on_this_torch():
    assert opt_patch._zero_grad_drops_grads()
    model = torch.nn.Linear(4, 2)
    optimizer, wrapper = fastreid_build_optimizer(_cfg(), model, contiguous=True)
    assert isinstance(wrapper, ContiguousParams)
    before, after = _one_step(optimizer, model)
    assert torch.equal(before, after)  # the failure: a full step with a non-zero gradient changed nothing


def test_patched_trainer_builder_learns():
    import fastreid.engine.defaults as defaults

    model = torch.nn.Linear(4, 2)
    optimizer, wrapper = defaults.build_optimizer(_cfg(), model)
    assert not isinstance(wrapper, ContiguousParams)
    before, after = _one_step(optimizer, model)
    # d(sum(Wx+b))/dW = 3 (batch of ones) for every entry: SGD moves each weight by -0.1 * 3
    torch.testing.assert_close(after, before - 0.3)


def test_feature_test_false_when_zero_grad_keeps_grads(monkeypatch):
    def zero_grad(self, set_to_none: bool = False):
        pass

    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", zero_grad)
    assert opt_patch._zero_grad_drops_grads() is False
