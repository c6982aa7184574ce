import math

import pytest
import torch
from torch import nn

from simclr.train.config import OptimConfig
from simclr.train.optim import LARS, build_optimizer, parameter_groups, peak_learning_rate, trust_ratio, warmup_cosine


def _layer() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_parameter_groups_put_biases_and_norm_parameters_apart() -> None:
    model = _layer()
    regular, excluded = parameter_groups(model)
    assert [p.shape for p in regular["params"]] == [torch.Size([3, 4])]
    assert len(excluded["params"]) == 3 and excluded["exclude"] and excluded["weight_decay"] == 0.0


def test_parameter_groups_leave_an_unadapted_module_apart() -> None:
    model = nn.Sequential(_layer(), nn.Linear(3, 2))  # the last layer: a fine-tuned classifier starting at zero
    regular, excluded = parameter_groups(model, unadapted=model[1])
    assert [p.shape for p in regular["params"]] == [torch.Size([3, 4])]
    assert any(p is model[1].weight for p in excluded["params"])


def test_lars_step_follows_the_trust_ratio_formula() -> None:
    lr, wd, eta = 0.5, 0.1, 0.001
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = nn.Parameter(torch.tensor([2.0]))
    optimizer = LARS([{"params": [weight]}, {"params": [bias], "exclude": True}], lr=lr, momentum=0.9,
                     weight_decay=wd, trust_coefficient=eta)
    weight.grad = torch.tensor([[1.0, 0.0]])
    bias.grad = torch.tensor([0.5])
    decayed = weight.grad + wd * weight.detach()  # [[1.3, 0.4]]
    expected_ratio = eta * 5.0 / math.sqrt(1.3**2 + 0.4**2)
    assert trust_ratio(weight.detach(), decayed, eta).item() == pytest.approx(expected_ratio)
    before_w, before_b = weight.detach().clone(), bias.detach().clone()
    optimizer.step()
    torch.testing.assert_close(weight.detach(), before_w - lr * expected_ratio * decayed)
    # Excluded: no weight decay and no adaptation, a plain lr step.
    torch.testing.assert_close(bias.detach(), before_b - lr * torch.tensor([0.5]))


def test_lars_momentum_accumulates_scaled_updates() -> None:
    param = nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([{"params": [param], "exclude": True}], lr=1.0, momentum=0.9)
    for _ in range(2):
        param.grad = torch.tensor([1.0])
        optimizer.step()
    assert param.item() == pytest.approx(1.0 - 1.0 - (0.9 + 1.0))


def test_trust_ratio_is_one_for_zero_norms() -> None:
    assert trust_ratio(torch.zeros(3), torch.ones(3), 0.001).item() == 1.0
    assert trust_ratio(torch.ones(3), torch.zeros(3), 0.001).item() == 1.0


@pytest.mark.parametrize("name,kind", [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_keeps_decay_off_excluded_parameters(name: str, kind: type) -> None:
    optimizer = build_optimizer(_layer(), OptimConfig(optimizer=name, weight_decay=0.1), batch_size=512)
    assert isinstance(optimizer, kind)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.6)


def test_learning_rate_scaling() -> None:
    assert peak_learning_rate(OptimConfig(base_lr=0.3), 4096) == pytest.approx(4.8)
    assert peak_learning_rate(OptimConfig(base_lr=0.075, lr_scaling="sqrt"), 4096) == pytest.approx(0.3)


def test_warmup_then_cosine() -> None:
    schedule = warmup_cosine(1.0, total_steps=110, warmup_steps=10)
    assert len(schedule) == 110
    assert schedule[0] == pytest.approx(0.1) and schedule[9] == pytest.approx(1.0)
    assert schedule[10] == pytest.approx(1.0) and schedule[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(schedule[10:], schedule[11:], strict=False))
    assert schedule[-1] < 0.001


@pytest.mark.parametrize("trust_clip", [False, True])
def test_multi_tensor_lars_makes_the_per_tensor_update(trust_clip: bool) -> None:
    from simclr.train.config import build_config
    from simclr.train.model import SimCLRModel

    config = build_config("cifar", {"model.arch": "resnet18", "model.width": 0.25, "optim.trust_clip": trust_clip})
    models = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = SimCLRModel(config.model)
        models.append((model, build_optimizer(model, config.optim, 512, foreach=foreach)))
    inputs = torch.rand(3, 8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for step in range(3):
        for model, optimizer in models:
            optimizer.zero_grad()
            model(inputs[step]).square().mean().backward()
            optimizer.step()
    (fast, _), (reference, _) = models
    for (name, one), other in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(one, other, rtol=1e-6, atol=1e-6, msg=name)
